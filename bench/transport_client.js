// A fast non-Python client for bench/transport.py: `node bench/transport_client.js TARGET
// sink|echo N` sends N 180-byte messages over one stream and prints {"rate": msgs/s}. Needs
// @grpc/grpc-js (not a project dependency): npm install --prefix /tmp/grpcjs @grpc/grpc-js
// and NODE_PATH=/tmp/grpcjs/node_modules. Used to show the server side's own ceiling.
const grpc = require('@grpc/grpc-js');
const crypto = require('crypto');

const [target, mode, count] = process.argv.slice(2);
const n = Number(count);
const message = crypto.randomBytes(180);
const client = new grpc.Client(target, grpc.credentials.createInsecure());
const started = process.hrtime.bigint();
const done = (got) => {
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  if (got !== n) { console.error(`got ${got} of ${n}`); process.exit(1); }
  console.log(JSON.stringify({ mode, messages: n, seconds, rate: n / seconds }));
  client.close();
};
const id = (x) => x;
let call;
if (mode === 'sink') {
  call = client.makeClientStreamRequest('/bench.Transport/Sink', id, id, new grpc.Metadata(),
    (err, answer) => { if (err) { console.error(err.message); process.exit(1); } done(Number(answer.readBigUInt64BE(0))); });
} else {
  let got = 0;
  call = client.makeBidiStreamRequest('/bench.Transport/Echo', id, id, new grpc.Metadata());
  call.on('data', () => { got++; });
  call.on('end', () => done(got));
  call.on('error', (e) => { console.error(e.message); process.exit(1); });
}
let sent = 0;
function pump() {
  while (sent < n) { sent++; if (!call.write(message)) { call.once('drain', pump); return; } }
  call.end();
}
pump();
