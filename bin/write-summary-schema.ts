// Regenerates reports/summary.schema.json from the zod schema of summary.json (`npm run schema`);
// tests/unit/summary-schema.test.ts fails while the shipped file is stale.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PACKAGE_DIR } from '../harness/paths.ts';
import { summaryJsonSchema } from '../harness/summary-schema.ts';

writeFileSync(join(PACKAGE_DIR, 'reports', 'summary.schema.json'), `${JSON.stringify(summaryJsonSchema(), null, 2)}\n`);
