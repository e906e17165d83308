import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../clusters/index.ts';
import { ConfigError } from '../../harness/errors.ts';
import { applyImageBuilderVars, parseImageBuilderVars } from '../../harness/imagebuilder.ts';
import { parseManifest } from '../../harness/manifests.ts';
import { applyManifest } from '../../clusters/index.ts';

const root = join(import.meta.dirname, '../..');
const local = parseConfig(readFileSync(join(root, 'fixtures/local.yaml'), 'utf8'), 'local.yaml');
const fixture = readFileSync(join(root, 'fixtures/image-builder/vars.yaml'), 'utf8');

function errorOf(text: string): ConfigError {
  try {
    parseImageBuilderVars(text, 'vars.yaml', () => undefined);
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return e as ConfigError;
  }
  throw new Error('no error');
}

describe('image-builder variables', () => {
  it('maps every reproduced variable onto the gvisor and containerd sections', () => {
    const v = parseImageBuilderVars(fixture, 'vars.yaml', () => undefined);
    const shoot = applyManifest(local, parseManifest(readFileSync(join(root, 'fixtures/manifests/shoot.yaml'), 'utf8'), 'shoot.yaml'));
    const warnings: string[] = [];
    const c = applyImageBuilderVars(shoot, v, (m) => warnings.push(m));
    expect(c.gvisor).toMatchObject({ pools: ['sandboxed'], handler: 'gvisor', binaryPath: '/usr/local/bin', version: 'latest', source: { type: 'build' }, configFlags: { 'net-raw': 'false', debug: 'true' } });
    expect(c.containerd).toEqual({ imagePullProgressTimeout: '2m0s', enableLimitNoFile: true, additionalSettings: '[debug]\n  level = "info"\n' });
    expect(warnings).toEqual(['vars.yaml: containerd_gvisor_runtime: image-builder\'s gVisor layout (handler "gvisor", /usr/local/bin) replaces handler "runsc", /var/bin/containerruntimes']);
    // The input config is not changed.
    expect(shoot.gvisor.handler).toBe('runsc');
  });

  it('takes JSON with Packer-style string booleans; a dated version selects the release download', () => {
    const v = parseImageBuilderVars('{"containerd_gvisor_runtime": "false", "containerd_gvisor_version": "20240212", "containerd_enable_limit_no_file": false}', 'vars.json');
    expect(v).toEqual({ source: 'vars.json', gvisorRuntime: false, gvisorVersion: '20240212', enableLimitNoFile: false });
    const c = applyImageBuilderVars(local, v);
    expect([c.gvisor.handler, c.gvisor.version, c.gvisor.source, c.containerd.enableLimitNoFile]).toEqual(['runsc', '20240212', { type: 'release' }, false]);
  });

  it('warns about variables it does not reproduce', () => {
    const warnings: string[] = [];
    parseImageBuilderVars('containerd_version: 1.7.20\ncontainerd_gvisor_runtime: true\n', 'vars.yaml', (m) => warnings.push(m));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/^vars\.yaml: containerd_version is not reproduced \(the harness maps containerd_gvisor_runtime, /);
  });

  it('a malformed variable is an error naming the file and the variable', () => {
    expect(errorOf('containerd_gvisor_runtime: "yes"\n').message).toBe('vars.yaml: containerd_gvisor_runtime: expected true or false (or "true"/"false"), got "yes"');
    expect(errorOf('containerd_gvisor_version: "2024-02-12"\n').message).toBe('vars.yaml: containerd_gvisor_version: expected "latest" or a release date yyyymmdd, got "2024-02-12"');
    expect(errorOf('containerd_image_pull_progress_timeout: 5 minutes\n').message).toBe('vars.yaml: containerd_image_pull_progress_timeout: expected a Go duration like "5m0s", got "5 minutes"');
    expect(errorOf('containerd_additional_settings: "[debug\\n"\n').message).toMatch(/^vars\.yaml: containerd_additional_settings: is not valid TOML: /);
    expect(errorOf('containerd_additional_settings: 3\n').message).toBe('vars.yaml: containerd_additional_settings: expected TOML text (appended to config.toml), got 3');
    // Several at once: every one is named.
    expect(errorOf('containerd_gvisor_runtime: 1\ncontainerd_enable_limit_no_file: maybe\n').issues.map((i) => i.path)).toEqual(['containerd_gvisor_runtime', 'containerd_enable_limit_no_file']);
  });

  it('not a mapping, or not YAML at all: an error naming the file', () => {
    expect(errorOf('- a\n- b\n').message).toMatch(/^vars\.yaml: \(root\): expected a mapping of image-builder variables/);
    expect(errorOf('a: [1,\n').message).toMatch(/^vars\.yaml: line \d+, column \d+: /);
    expect(errorOf('a: 1\na: 2\n').message).toMatch(/^vars\.yaml: line 2, column 1: Map keys must be unique/);
  });
});
