// The one way a value goes into a POSIX shell command line: single-quoted, so nothing in it
// ($(…), backticks, ;, newlines, quotes) is interpreted. JSON.stringify is not quoting: inside its
// double quotes $(…) and backticks still expand.

/** Quotes one word for a POSIX shell. */
export function shQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** A command line from words, each quoted. */
export function shCommand(words: string[]): string {
  return words.map(shQuote).join(' ');
}
