// Drives `capsem e2b` with E2B's official JS SDK (npm `e2b`), unchanged,
// pointed at it by E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY: the same
// flow as ../e2b_client.py, in the SDK's own words. Run by
// crates/capsem/tests/it/e2b.rs; exits non-zero on the first failed check.

import { CommandExitError, FileType, NotFoundError, Sandbox } from 'e2b'

function check(cond, what, got) {
  if (!cond) {
    throw new Error(`${what}: got ${JSON.stringify(got)}`)
  }
  console.log('e2b_client.mjs: ok:', what)
}

async function main() {
  const sbx = await Sandbox.create({ timeoutMs: 600_000 })
  check(await sbx.isRunning(), 'Sandbox.create makes a running sandbox')

  const ran = await sbx.commands.run('echo hi')
  check(ran.stdout === 'hi\n' && ran.exitCode === 0, 'commands.run returns stdout and 0', ran)
  const seen = []
  await sbx.commands.run('for i in 1 2 3; do echo line$i; sleep 0.2; done', {
    onStdout: (data) => seen.push(data),
  })
  check(seen.join('') === 'line1\nline2\nline3\n', 'onStdout streams the output', seen)
  try {
    await sbx.commands.run('echo bad >&2; exit 3')
    throw new Error('a failing command did not throw')
  } catch (e) {
    check(e instanceof CommandExitError && e.exitCode === 3 && e.stderr === 'bad\n',
      'a failing command throws CommandExitError with its code', String(e))
  }
  const sleeper = await sbx.commands.run('sleep 600', { background: true })
  const pids = (await sbx.commands.list()).map((p) => p.pid)
  check(pids.includes(sleeper.pid), 'a background command is listed', pids)
  check(await sbx.commands.kill(sleeper.pid), 'kill kills it')

  await sbx.files.write('/root/js/hello.txt', 'hello from js')
  check(await sbx.files.read('/root/js/hello.txt') === 'hello from js', 'files.write and files.read')
  const entries = await sbx.files.list('/root/js')
  check(entries.length === 1 && entries[0].name === 'hello.txt' && entries[0].type === FileType.FILE,
    'files.list lists the file', entries)
  try {
    await sbx.files.read('/root/nothing')
    throw new Error('reading a missing file did not throw')
  } catch (e) {
    check(e instanceof NotFoundError, 'a missing file is NotFoundError', String(e))
  }

  const other = await Sandbox.create()
  const boots = new Set()
  for (const s of [sbx, other]) {
    boots.add((await s.commands.run('cat /proc/sys/kernel/random/boot_id')).stdout)
  }
  check(boots.size === 2, 'two sandboxes at once are two machines', [...boots])
  await other.kill()
  await sbx.kill()
  check(!(await sbx.isRunning()), 'kill ends the sandbox')
  console.log('e2b_client.mjs: done')
}

main().catch((e) => {
  console.error(`e2b_client.mjs: FAILED: ${e.stack || e}`)
  process.exit(1)
})
