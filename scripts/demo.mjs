// `npm run demo`: boots the test VM (Debian's 6.12 kernel under QEMU, see scripts/vm) and, inside it, serves a
// RAM disk with `vduse blk`, puts an ext4 file system on the new /dev/vdX, mounts it, writes and reads files,
// shows lsblk, and tears everything down, printing each step.
//
// On the host: `node scripts/demo.mjs` (after `npm run build`). Inside the VM the same file runs with --inside.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.dirname(HERE);
// VDUSE_DEMO_DIST: another build directory than dist/ (the VM passes VDUSE_* variables through).
const CLI = path.join(ROOT, process.env.VDUSE_DEMO_DIST ?? 'dist', 'src', 'cli', 'main.js');
const NAME = 'demo0';

function step(text) {
  process.stdout.write(`\n==> ${text}\n`);
}

/** Run a command, show it and its output. */
function run(cmd, args = [], options = {}) {
  process.stdout.write(`$ ${[cmd, ...args].join(' ')}\n`);
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'inherit', 'inherit'], ...options });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`${cmd} exited with ${r.status ?? r.signal}`);
}

async function inside() {
  step('The kernel and its VDUSE support');
  run('uname', ['-r']);
  run('ls', ['-l', '/dev/vduse/control']);

  step(
    `Start the daemon: vduse blk --name ${NAME} --backend memory:256M --queues 2 --serial DEMO-DISK --stats`,
  );
  const daemon = spawn(
    process.execPath,
    [
      CLI,
      'blk',
      '--name',
      NAME,
      '--backend',
      'memory:256M',
      '--queues',
      '2',
      '--serial',
      'DEMO-DISK',
      '--stats',
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const exited = new Promise((resolve) => daemon.on('exit', (code, signal) => resolve(code ?? signal)));
  const device = await new Promise((resolve, reject) => {
    let out = '';
    daemon.stdout.setEncoding('utf8').on('data', (d) => {
      out += d;
      const nl = out.indexOf('\n');
      if (nl >= 0) resolve(out.slice(0, nl));
    });
    daemon.on('exit', (code) => reject(new Error(`vduse exited (${code}) before it was ready`)));
  });
  process.stdout.write(`the daemon printed: ${device}\n`);

  const mnt = '/tmp/vduse-demo-mnt';
  let mounted = false;
  let code;
  try {
    step('The new disk, as the kernel sees it');
    run('lsblk', ['-o', 'NAME,SIZE,TYPE,SERIAL,MOUNTPOINT', device]);
    run('cat', [`/sys/block/${path.basename(device)}/serial`]);
    process.stdout.write('\n');

    step(`Make an ext4 file system on ${device} and mount it on ${mnt}`);
    run('mkfs.ext4', ['-q', '-F', '-L', 'vduse-demo', device]);
    fs.mkdirSync(mnt, { recursive: true });
    run('mount', [device, mnt]);
    mounted = true;

    step('Write files');
    fs.writeFileSync(path.join(mnt, 'hello.txt'), 'Hello from a virtio-blk device served by TypeScript!\n');
    run('dd', ['if=/dev/urandom', `of=${mnt}/random.bin`, 'bs=1M', 'count=32', 'status=none']);
    run('sync');
    run('ls', ['-l', mnt]);
    const sum = execFileSync('sha256sum', [`${mnt}/random.bin`], { encoding: 'utf8' }).split(' ')[0];
    process.stdout.write(`sha256 of random.bin: ${sum}\n`);

    step('Unmount, drop caches, mount again and read the files back');
    run('umount', [mnt]);
    mounted = false;
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
    run('mount', [device, mnt]);
    mounted = true;
    run('cat', [`${mnt}/hello.txt`]);
    const again = execFileSync('sha256sum', [`${mnt}/random.bin`], { encoding: 'utf8' }).split(' ')[0];
    process.stdout.write(`sha256 of random.bin: ${again} ${again === sum ? '(same: OK)' : '(DIFFERENT!)'}\n`);
    if (again !== sum) throw new Error('the data read back differs');
    run('df', ['-h', mnt]);
    run('lsblk', ['-o', 'NAME,SIZE,TYPE,SERIAL,FSTYPE,MOUNTPOINT', device]);

    step('Unmount and check the file system');
    run('umount', [mnt]);
    mounted = false;
    run('e2fsck', ['-f', '-n', device]);
  } finally {
    if (mounted) spawnSync('umount', [mnt]);
    step('Stop the daemon (SIGINT): it detaches the disk, destroys the VDUSE device and prints its counters');
    daemon.kill('SIGINT');
    code = await exited;
    process.stdout.write(`vduse exited with ${code}\n`);
    run('ls', ['/dev/vduse']);
  }
  if (code !== 0) throw new Error(`vduse exited with ${code}`);
  step('Done');
}

function outside() {
  if (!fs.existsSync(CLI)) {
    process.stderr.write(`demo: ${CLI} is missing: run npm run build first (npm run demo does)\n`);
    process.exit(1);
  }
  process.stdout.write(
    'Booting the test VM (QEMU, Debian 6.12 kernel with VDUSE); the first run provisions it.\n',
  );
  const r = spawnSync(
    process.execPath,
    [path.join(HERE, 'vm', 'vm.mjs'), process.execPath, fileURLToPath(import.meta.url), '--inside'],
    {
      stdio: 'inherit',
      cwd: ROOT,
    },
  );
  process.exit(r.status ?? 1);
}

if (process.argv.includes('--inside')) {
  inside().catch((err) => {
    process.stderr.write(`demo: ${err.message}\n`);
    process.exit(1);
  });
} else {
  outside();
}
