// What the suites run inside containers and on nodes, and how they read the answers.
// Pure functions, so each reading rule has a unit test.

export function gvisorBootLog(output: string): { lines: string[]; starts: boolean; ready: boolean; gvisorLines: number } {
  const lines = output.split('\n').map((l) => l.trimEnd()).filter(Boolean);
  return {
    lines,
    starts: lines.some((l) => /\bStarting gVisor\.\.\./.test(l)),
    ready: /\bReady!$/.test(lines.at(-1) ?? ''),
    gvisorLines: lines.filter((l) => /gVisor/.test(l)).length,
  };
}

/** Main-process script: says whether it runs under gVisor, then pings loopback. */
export const NET_RAW_PROBE = ['sh', '-c', 'dmesg 2>/dev/null | grep -q "Starting gVisor" && echo "sandbox=gvisor"; ping -c 1 -W 3 127.0.0.1 2>&1; echo "ping-exit=$?"'];

export function parseNetRawProbe(output: string): { gvisor: boolean; pingExit: number | undefined; refused: boolean; received: boolean } {
  const m = /ping-exit=(\d+)/.exec(output);
  return {
    gvisor: output.includes('sandbox=gvisor'),
    pingExit: m ? Number(m[1]) : undefined,
    refused: /permission denied|operation not permitted/i.test(output),
    received: /\b1 packets received\b/.test(output),
  };
}

/** "Max open files" (soft, hard) from /proc/<pid>/limits; "unlimited" becomes Infinity. */
export function parseNofile(limits: string): { soft: number; hard: number } | undefined {
  const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(limits);
  if (!m) return undefined;
  const n = (s: string) => (s === 'unlimited' ? Infinity : Number(s));
  return { soft: n(m[1]!), hard: n(m[2]!) };
}

/** `systemctl show -p LimitNOFILE` → number ("infinity" → Infinity). */
export function parseSystemdLimit(text: string): number | undefined {
  const m = /^LimitNOFILE=(\S+)/m.exec(text);
  if (!m) return undefined;
  return m[1] === 'infinity' ? Infinity : Number(m[1]);
}
