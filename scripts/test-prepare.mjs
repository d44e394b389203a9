// First step of `npm test` after build and lint: provision what the tests need on this machine (Debian
// packages of the real peers — nbdkit, qemu-nbd, qemu-storage-daemon, fio — and the test VM's kernel), so
// that the unit tier's peer tests and the kernel tier find them. Under CI=true a failure is fatal; elsewhere
// it is one line, and the tests that need what is missing say that they were skipped.
import { provision, ProvisionError } from './vm/provision.mjs';

const ci = process.env.CI === 'true' || process.env.CI === '1';
try {
  await provision({ log: (line) => process.stderr.write(`test: ${line}\n`) });
} catch (e) {
  const message = e instanceof ProvisionError ? e.message : String(e?.message ?? e);
  if (ci) {
    process.stderr.write(`test: cannot provision the test machine: ${message}\n`);
    process.exit(1);
  }
  process.stderr.write(
    `test: not provisioned (${message}); tests that need the VM or peers will be skipped\n`,
  );
}
