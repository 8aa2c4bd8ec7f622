// Times RudderStack's own Auth0 source transform on this machine, for the README's comparison.
//
// It loads `src/sources/auth0/transform.js` from a rudder-transformer checkout given on the command line (nothing
// of it is copied here) and feeds it what `cargo bench --bench transform` feeds ours: the fixture corpus
// repeated with fresh log_ids, as Log Streams webhook bodies of 100 `{log_id, data}` wrappers each. Like
// `transform FILE`, each pass starts from JSON text (the body is parsed by `process()` itself) and ends with JSON
// text (the events are serialised). One pass warms the JIT up; then each timed pass transforms every entry. It
// prints the median pass as entries per second of wall time and per second of CPU time (user + system).
//
// Usage: node auth0-transform.js CHECKOUT FIXTURE_DIR [ENTRIES] [PASSES]
'use strict';
const fs = require('fs');
const path = require('path');

const [checkout, fixtures, entries = '100000', passes = '5'] = process.argv.slice(2);
if (!checkout || !fixtures) {
  console.error('usage: node auth0-transform.js CHECKOUT FIXTURE_DIR [ENTRIES] [PASSES]');
  process.exit(2);
}
const upstream = require(path.resolve(checkout, 'src/sources/auth0/transform.js'));

const corpus = fs
  .readdirSync(fixtures)
  .filter((f) => f.endsWith('.json'))
  .sort()
  .flatMap((f) => JSON.parse(fs.readFileSync(path.join(fixtures, f), 'utf-8')).input);
const total = Number(entries);
const bodies = [];
for (let i = 0; i < total; i += 100) {
  const wrappers = [];
  for (let j = i; j < Math.min(i + 100, total); j += 1) {
    const logId = `9${String(j).padStart(55, '0')}`;
    wrappers.push({ log_id: logId, data: { ...corpus[j % corpus.length], log_id: logId } });
  }
  bodies.push(JSON.stringify(wrappers));
}

function pass() {
  const cpu = process.cpuUsage();
  const start = process.hrtime.bigint();
  let events = 0;
  let bytes = 0;
  for (const body of bodies) {
    const out = upstream.process({ request: { body } });
    events += out.length;
    bytes += JSON.stringify(out).length;
  }
  const wall = Number(process.hrtime.bigint() - start) / 1e9;
  const used = process.cpuUsage(cpu);
  return { events, bytes, wall, cpu: (used.user + used.system) / 1e6 };
}

pass();
const runs = [];
for (let i = 0; i < Number(passes); i += 1) runs.push(pass());
runs.sort((a, b) => a.wall - b.wall);
const median = runs[Math.floor(runs.length / 2)];
console.log(
  `rudder-transformer auth0 process(): ${total} entries (${median.events} events) per pass, ${runs.length} passes; ` +
    `median ${Math.round(total / median.wall)} entries/s wall, ${Math.round(total / median.cpu)} entries per CPU-second ` +
    `(node ${process.version})`,
);
