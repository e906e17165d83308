// Which /24 the local cluster's bridge takes, given this machine's routes (`ip -j -4 route show table all`).
import { describe, expect, it } from 'vitest';
import { chooseClusterNetwork, clusterNetwork } from '../../clusters/kube/controlplane.ts';

const S = '/root/.local/state/gvisor-e2e/unit';
const first = clusterNetwork(S);
// The /22 that holds the first choice: a wider route over it.
const wider = `10.217.${Number(first.prefix.split('.')[2]) & ~3}.0/22`;
const next = `10.217.${20 + ((Number(first.prefix.split('.')[2]) - 20 + 1) % 200)}`;

describe('chooseClusterNetwork', () => {
  it('takes the state dir\'s own /24 when only a default route and unrelated ones exist', () => {
    expect(chooseClusterNetwork(S, [{ dst: 'default', dev: 'eth0' }, { dst: '192.0.2.0/24', dev: 'eth0' }, { dst: '127.0.0.1', dev: 'lo', type: 'local', table: 'local' }])).toEqual(first);
  });

  it('moves on when a route, a wider route or a single local address overlaps it', () => {
    for (const dst of [`${first.prefix}.0/24`, `${first.prefix}.128/25`, `${first.prefix}.7`, wider]) {
      const n = chooseClusterNetwork(S, [{ dst, dev: 'other0' }]);
      expect(n.bridge).toBe(first.bridge);
      expect(n.prefix, dst).not.toBe(first.prefix);
    }
    expect(chooseClusterNetwork(S, [{ dst: `${first.prefix}.0/24`, dev: 'other0' }]).prefix).toBe(next);
  });

  it('ignores the routes of its own bridge (a crash left it) and fails plainly when nothing is free', () => {
    expect(chooseClusterNetwork(S, [{ dst: `${first.prefix}.0/24`, dev: first.bridge }])).toEqual(first);
    expect(() => chooseClusterNetwork(S, [{ dst: '10.0.0.0/8', dev: 'vpn0' }])).toThrow(/no free \/24 in 10.217.20.0-10.217.219.0 for the local cluster's bridge gve2e\w+: routes on this machine overlap every one \(10.0.0.0\/8 dev vpn0\)/);
  });
});
