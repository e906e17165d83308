import { describe, expect, it } from 'vitest';
import { gvisorBootLog, NET_RAW_PROBE, parseNetRawProbe, parseNofile, parseSystemdLimit } from '../../harness/probes.ts';
import { parseCriLog } from '../../harness/sandbox.ts';

// What `dmesg` prints inside a gVisor sandbox: a fake kernel log of jokes, ending in "Ready!".
const GVISOR_DMESG = `[    0.000000] Starting gVisor...
[    0.497163] Gathering forks...
[    0.843219] Checking naughty and nice process list...
[    1.063312] Mounting deweydecimalfs...
[    1.306128] Synthesizing system calls...
[    1.628539] Reticulating splines...
[    2.010435] Consulting tar man page...
[    2.381254] Creating bureaucratic processes...
[    2.556107] Setting up VFS...
[    2.640199] Setting up FUSE...
[    2.643852] Ready!
`;

describe('gvisorBootLog', () => {
  it('recognises a gVisor boot log', () => {
    const log = gvisorBootLog(GVISOR_DMESG);
    expect(log.starts).toBe(true);
    expect(log.ready).toBe(true);
    expect(log.gvisorLines).toBe(1);
    expect(log.lines).toHaveLength(11);
    expect(log.lines[0]).toBe('[    0.000000] Starting gVisor...');
    expect(log.lines.at(-1)).toBe('[    2.643852] Ready!');
  });

  it('tolerates CRLF and trailing blanks', () => {
    const log = gvisorBootLog(`${GVISOR_DMESG.replace(/\n/g, '  \r\n')}\n\n`);
    expect(log).toMatchObject({ starts: true, ready: true, gvisorLines: 1 });
    expect(log.lines).toHaveLength(11);
  });

  it("runc's dmesg is not a gVisor boot", () => {
    const log = gvisorBootLog('dmesg: klogctl: Operation not permitted\n');
    expect(log).toEqual({ lines: ['dmesg: klogctl: Operation not permitted'], starts: false, ready: false, gvisorLines: 0 });
  });

  it('a log that does not end in Ready! is not ready', () => {
    const cut = GVISOR_DMESG.split('\n').slice(0, 6).join('\n');
    expect(gvisorBootLog(cut)).toMatchObject({ starts: true, ready: false });
    const after = `${GVISOR_DMESG}[    3.000000] Something after Ready!?\n`;
    expect(gvisorBootLog(after)).toMatchObject({ starts: true, ready: false });
  });

  it('an empty output', () => {
    expect(gvisorBootLog('')).toEqual({ lines: [], starts: false, ready: false, gvisorLines: 0 });
  });
});

describe('parseNetRawProbe', () => {
  it('the probe script reports the sandbox and the exit code', () => {
    expect(NET_RAW_PROBE.slice(0, 2)).toEqual(['sh', '-c']);
    expect(NET_RAW_PROBE[2]).toContain('sandbox=gvisor');
    expect(NET_RAW_PROBE[2]).toContain('ping-exit=$?');
  });

  it('denied (net-raw off in gVisor)', () => {
    const out = 'sandbox=gvisor\nPING 127.0.0.1 (127.0.0.1): 56 data bytes\nping: permission denied (are you root?)\nping-exit=1\n';
    expect(parseNetRawProbe(out)).toEqual({ gvisor: true, pingExit: 1, refused: true, received: false });
  });

  it('"Operation not permitted" counts as refused', () => {
    expect(parseNetRawProbe('ping: socket: Operation not permitted\nping-exit=2\n')).toEqual({ gvisor: false, pingExit: 2, refused: true, received: false });
  });

  it('allowed (net-raw on)', () => {
    const out = [
      'sandbox=gvisor',
      'PING 127.0.0.1 (127.0.0.1): 56 data bytes',
      '64 bytes from 127.0.0.1: seq=0 ttl=64 time=0.158 ms',
      '',
      '--- 127.0.0.1 ping statistics ---',
      '1 packets transmitted, 1 packets received, 0% packet loss',
      'round-trip min/avg/max = 0.158/0.158/0.158 ms',
      'ping-exit=0',
    ].join('\n');
    expect(parseNetRawProbe(out)).toEqual({ gvisor: true, pingExit: 0, refused: false, received: true });
  });

  it('a lost packet is not received', () => {
    const out = '1 packets transmitted, 0 packets received, 100% packet loss\nping-exit=1\n';
    expect(parseNetRawProbe(out)).toMatchObject({ pingExit: 1, received: false, refused: false });
  });

  it('unfinished output has no exit code', () => {
    expect(parseNetRawProbe('sandbox=gvisor\nPING 127.0.0.1 (127.0.0.1): 56 data bytes\n')).toEqual({
      gvisor: true,
      pingExit: undefined,
      refused: false,
      received: false,
    });
    expect(parseNetRawProbe('')).toEqual({ gvisor: false, pingExit: undefined, refused: false, received: false });
  });
});

const PROC_LIMITS = `Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max file size             unlimited            unlimited            bytes     
Max data size             unlimited            unlimited            bytes     
Max stack size            8388608              unlimited            bytes     
Max core file size        unlimited            unlimited            bytes     
Max resident set          unlimited            unlimited            bytes     
Max processes             127448               127448               processes 
Max open files            1048576              1048576              files     
Max locked memory         8388608              8388608              bytes     
Max address space         unlimited            unlimited            bytes     
Max file locks            unlimited            unlimited            locks     
Max pending signals       127448               127448               signals   
Max msgqueue size         819200               819200               bytes     
Max nice priority         0                    0                    
Max realtime priority     0                    0                    
Max realtime timeout      unlimited            unlimited            us        
`;

describe('parseNofile', () => {
  it('reads "Max open files" from /proc/<pid>/limits', () => {
    expect(parseNofile(PROC_LIMITS)).toEqual({ soft: 1048576, hard: 1048576 });
  });

  it('soft and hard differ; "unlimited" is Infinity', () => {
    const text = PROC_LIMITS.replace(/^Max open files .*$/m, 'Max open files            1024                 unlimited            files     ');
    expect(parseNofile(text)).toEqual({ soft: 1024, hard: Infinity });
  });

  it('no such line', () => {
    expect(parseNofile('cat: /proc/123/limits: No such file or directory\n')).toBeUndefined();
    expect(parseNofile('')).toBeUndefined();
  });
});

describe('parseSystemdLimit', () => {
  it('systemctl show output', () => {
    expect(parseSystemdLimit('LimitNOFILE=1048576\n')).toBe(1048576);
    expect(parseSystemdLimit('LimitNOFILE=infinity\n')).toBe(Infinity);
  });

  it('a drop-in body: the commented LimitNOFILE=infinity is not the setting', () => {
    const dropIn = '[Service]\n# LimitNOFILE=infinity on Mariner means 1073741816, which has caused issues\n# running some software in containers such as mysql5 and sshd.\nLimitNOFILE=1048576\n';
    expect(parseSystemdLimit(dropIn)).toBe(1048576);
  });

  it('nothing set', () => {
    expect(parseSystemdLimit('[Service]\nLimitNPROC=100\n')).toBeUndefined();
    expect(parseSystemdLimit('')).toBeUndefined();
  });
});

describe('parseCriLog', () => {
  it('full lines', () => {
    const log = '2024-05-01T10:00:00.000000001Z stdout F hello\n2024-05-01T10:00:00.000000002Z stdout F world\n';
    expect(parseCriLog(log)).toBe('hello\nworld\n');
  });

  it('partial (P) lines are joined with the following F line', () => {
    const log = [
      '2024-05-01T10:00:00.1Z stdout P first part, ',
      '2024-05-01T10:00:00.2Z stdout P second part, ',
      '2024-05-01T10:00:00.3Z stdout F end',
      '2024-05-01T10:00:00.4Z stdout F next line',
    ].join('\n');
    expect(parseCriLog(log)).toBe('first part, second part, end\nnext line\n');
  });

  it('stderr lines are kept in order with stdout', () => {
    const log = '2024-05-01T10:00:00.1Z stdout F out 1\n2024-05-01T10:00:00.2Z stderr F ping: permission denied (are you root?)\n2024-05-01T10:00:00.3Z stdout F ping-exit=1\n';
    expect(parseCriLog(log)).toBe('out 1\nping: permission denied (are you root?)\nping-exit=1\n');
  });

  it('empty lines and text that keeps its spaces', () => {
    const log = '2024-05-01T10:00:00.1Z stdout F \n2024-05-01T10:00:00.2Z stdout F\n2024-05-01T10:00:00.3Z stdout F   indented  \n';
    expect(parseCriLog(log)).toBe('\n\n  indented  \n');
  });

  it('garbage is ignored', () => {
    const log = 'not a cri line\n\n2024-05-01T10:00:00.1Z stdin F nope\n2024-05-01T10:00:00.2Z stdout X nope\nstdout F no timestamp\n2024-05-01T10:00:00.3Z stdout F kept\n';
    expect(parseCriLog(log)).toBe('kept\n');
    expect(parseCriLog('')).toBe('');
  });
});
