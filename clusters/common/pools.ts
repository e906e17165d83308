// Pool rules the providers share: names unique, every gVisor pool among the cluster's pools, and a
// manifest's pools present in the config.
import type { AddIssue } from '../../harness/config.ts';
import { ConfigError } from '../../harness/errors.ts';
import type { GVisorSpec } from '../../harness/manifests.ts';

/** cluster.pools as kind and local clusters declare them: names unique, and every gVisor pool among them. */
export function checkPoolList(pools: { name: string }[], gvisorPools: string[], issue: AddIssue): void {
  const names = pools.map((p) => p.name);
  names.forEach((n, i) => {
    if (names.indexOf(n) < i) issue(['cluster', 'pools', i, 'name'], `duplicate pool name "${n}"`);
  });
  gvisorPoolsAmong([...new Set(names)], gvisorPools, issue);
}

export function gvisorPoolsAmong(names: string[], gvisorPools: string[], issue: AddIssue): void {
  gvisorPools.forEach((p, i) => {
    if (!names.includes(p)) issue(['gvisor', 'pools', i], `no pool "${p}" in cluster.pools (pools: ${names.join(', ')})`);
  });
}

/** Members listed one by one (nodes, hosts): names unique, and every gVisor pool has one. */
export function checkMembers(members: { name: string; pool: string }[], key: 'nodes' | 'hosts', gvisorPools: string[], issue: AddIssue): void {
  const what = key === 'hosts' ? 'host' : 'node';
  const names = new Set<string>();
  members.forEach((n, i) => {
    if (names.has(n.name)) issue(['cluster', key, i, 'name'], `duplicate ${what} name "${n.name}"`);
    names.add(n.name);
  });
  const pools = new Set(members.map((n) => n.pool));
  gvisorPools.forEach((p, i) => {
    if (!pools.has(p)) issue(['gvisor', 'pools', i], `no ${what} is in pool "${p}" (pools: ${[...pools].join(', ')})`);
  });
}

/** A manifest applied to a cluster whose pools are fixed: its gVisor pools must be among them. */
export function requireManifestPools(have: string[], spec: GVisorSpec): void {
  const missing = spec.pools.filter((p) => !have.includes(p));
  if (missing.length) throw new ConfigError(spec.source, [{ path: 'workerPool', message: `no node of the config is in pool(s) ${missing.join(', ')}` }]);
}
