// The contract of summary.json for CI tools: a zod schema the run's summary must satisfy, from
// which reports/summary.schema.json (JSON Schema 2020-12) is generated and shipped.
import { z } from 'zod';

/** Bumped when a field is removed or changes meaning; new optional fields keep the version. */
export const SUMMARY_SCHEMA_VERSION = 1;

const state = z.enum(['passed', 'failed', 'broken', 'skipped']).describe('passed; failed (the node answered wrong); broken (the harness or infrastructure could not ask); skipped (with the reason as message)');
const counts = z.strictObject({ passed: z.number().int(), failed: z.number().int(), broken: z.number().int(), skipped: z.number().int() });

export const RUN_SUMMARY_SCHEMA = z
  .object({
    schemaVersion: z.literal(SUMMARY_SCHEMA_VERSION),
    runId: z.string().describe('yyyymmdd-hhmmss-<4 hex>; the run directory is <reportsDir>/<runId>'),
    cluster: z.string(),
    state: state.describe('the worst state of any suite: broken > failed > passed > skipped'),
    exitCode: z.number().int().describe('the exit code of `gvisor-e2e run` for this summary: 0 passed, 1 failed, 2 broken, 3 nothing checked'),
    startedAt: z.string().describe('ISO 8601'),
    durationMs: z.number(),
    continues: z
      .object({ runId: z.string(), checks: z.number().int().describe('how many failed or broken checks of that run were re-run') })
      .optional()
      .describe('set by `run --rerun-failed`: the run whose failed and broken checks this run re-ran'),
    suites: z.array(
      z.object({
        name: z.string(),
        state,
        durationMs: z.number(),
        counts,
        nodes: z.record(z.string(), counts).describe('per node name ("-" = not tied to a node)'),
        firstFailure: z.string().optional().describe('"[node] check: message" of the first failed or broken check'),
      }),
    ),
    checks: z.array(
      z.object({
        suite: z.string(),
        node: z.string().describe('the node the check ran on; "-" = the suite itself or the cluster'),
        name: z.string(),
        state,
        durationMs: z.number(),
        message: z.string().optional().describe('why it failed, broke or was skipped (redacted)'),
        notes: z.array(z.string()),
        warnings: z.array(z.string()),
        attempts: z.number().int().min(1),
      }),
    ),
    pods: z.object({
      total: z.number().int(),
      privileged: z.array(z.object({ suite: z.string(), node: z.string(), pod: z.string(), handler: z.string(), privileged: z.array(z.string()) })),
    }),
    diagnostics: z.array(z.string()).optional().describe('per-node diagnostics directories, relative to the run directory (only after a failed or broken check)'),
  })
  .describe('gvisor-e2e run summary (summary.json)');

/** The JSON Schema shipped as reports/summary.schema.json. */
export function summaryJsonSchema(): Record<string, unknown> {
  return { ...z.toJSONSchema(RUN_SUMMARY_SCHEMA, { target: 'draft-2020-12', io: 'output' }), $id: `https://gvisor-e2e.dev/schemas/summary-v${SUMMARY_SCHEMA_VERSION}.json` };
}
