#!/usr/bin/env node
// An iotsync AMQP 1.0 consumer written with rhea, for the server's tests. Same command
// line and JSON-lines output as consumer.py.
'use strict';
let rhea;
try {
  rhea = require('rhea');
} catch (e) {
  console.log(JSON.stringify({ event: 'fatal', description: 'npm rhea is not installed (cd tests/peers && npm install): ' + e.message }));
  process.exit(3);
}
const crypto = require('crypto');
const fs = require('fs');

function parse(argv) {
  const a = { clientId: 'node-client', auth: 'appkey', signMethod: 'hmacsha256', credit: 10, count: 0, mode: 'receive', disposition: 'accept' };
  const names = { '--url': 'url', '--username': 'username', '--password': 'password', '--app-key': 'appKey', '--app-secret': 'appSecret', '--ts': 'ts', '--group': 'group', '--client-id': 'clientId', '--auth': 'auth', '--sign-method': 'signMethod', '--ca': 'ca', '--credit': 'credit', '--count': 'count', '--mode': 'mode', '--disposition': 'disposition' };
  for (let i = 2; i < argv.length; i += 2) {
    const k = names[argv[i]];
    if (!k) throw new Error('unknown option ' + argv[i]);
    a[k] = argv[i + 1];
  }
  a.credit = Number(a.credit);
  a.count = Number(a.count);
  return a;
}

function out(o) { console.log(JSON.stringify(o)); }

function credentials(a) {
  if (a.username !== undefined) return [a.username, a.password || ''];
  let user, mac;
  if (a.auth === 'appkey') {
    const group = a.group ? ',groupId=' + a.group : '';
    user = `${a.clientId}|authMode=appkey,signMethod=SHA256,random=${a.ts},appKey=${a.appKey}${group}|`;
    mac = crypto.createHmac('sha256', a.appSecret).update(`random=${a.ts}`).digest('base64');
  } else {
    const group = a.group ? ',consumerGroupId=' + a.group : '';
    user = `${a.clientId}|authMode=aksign,signMethod=${a.signMethod},timestamp=${a.ts},authId=${a.appKey}${group}|`;
    const alg = { hmacmd5: 'md5', hmacsha1: 'sha1', hmacsha256: 'sha256' }[a.signMethod];
    mac = crypto.createHmac(alg, a.appSecret).update(`authId=${a.appKey}&timestamp=${a.ts}`).digest('base64');
  }
  return [user, mac];
}

const a = parse(process.argv);
const url = new URL(a.url);
const [username, password] = credentials(a);
const container = rhea.create_container({ id: a.clientId });
const opts = { host: url.hostname, port: Number(url.port), username, password, reconnect: false, idle_time_out: 30000 };
if (url.protocol === 'amqps:') {
  Object.assign(opts, { transport: 'tls', ca: [fs.readFileSync(a.ca)], servername: 'localhost' });
}
let received = 0;
const seen = new Set();
let reported = false;
function err(scope, e) {
  if (reported || !e) return;
  reported = true;
  out({ event: 'error', scope, condition: e.condition, description: e.description });
}

container.on('connection_open', (ctx) => {
  out({ event: 'opened' });
  if (a.mode === 'login') { out({ event: 'done' }); ctx.connection.close(); }
});
container.on('message', (ctx) => {
  const m = ctx.message;
  const ap = m.application_properties || {};
  let body = m.body;
  let bodyType = typeof body;
  if (body && body.typecode !== undefined) { bodyType = 'section:' + body.typecode; body = body.content; }
  const mid = ap.messageId;
  out({ event: 'message', topic: ap.topic, messageId: mid, generateTime: Number(ap.generateTime), amqpMessageId: m.message_id, bodyType, payload: JSON.parse(Buffer.from(body).toString('utf8')), deliveryCount: m.delivery_count || 0 });
  received += 1;
  let d = a.disposition;
  if (d === 'release-first') d = seen.has(mid) ? 'accept' : 'release';
  seen.add(mid);
  if (d === 'accept') ctx.delivery.accept();
  else if (d === 'release') ctx.delivery.release();
  else if (d === 'modify') ctx.delivery.modified({ delivery_failed: true });
  else if (d === 'reject') ctx.delivery.reject({ condition: 'test:rejected', description: 'rejected by the test' });
  if (d !== 'none') out({ event: 'settled', messageId: mid, outcome: d });
  // Detach first so the last dispositions reach the server before the connection closes.
  if (a.count && received >= a.count && d !== 'none') { out({ event: 'done' }); ctx.receiver.close(); }
});
container.on('connection_error', (ctx) => err('connection', ctx.connection.error || ctx.error));
container.on('receiver_close', (ctx) => ctx.connection.close());
container.on('receiver_error', (ctx) => err('link', ctx.receiver.error));
container.on('sender_error', (ctx) => err('link', ctx.sender.error));
container.on('connection_close', (ctx) => {
  if (!ctx.connection.error) out({ event: 'closed' });
  setTimeout(() => { out({ event: 'exit' }); process.exit(0); }, 20);
});
container.on('disconnected', (ctx) => { if (ctx.error) err('transport', ctx.error); out({ event: 'disconnected' }); out({ event: 'exit' }); process.exit(0); });
container.on('error', (e) => err('container', e));

const conn = container.connect(opts);
if (a.mode === 'send') conn.open_sender('default');
else if (a.mode !== 'idle' && a.mode !== 'login') conn.open_receiver({ source: 'default', autoaccept: false, credit_window: a.credit });
