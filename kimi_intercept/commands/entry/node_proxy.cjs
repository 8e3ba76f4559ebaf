// kimi-intercept: make Node's own https.request and fetch honour HTTPS_PROXY / NO_PROXY.
// Loaded by `kimi-intercept run` through NODE_OPTIONS=--require=<this file>. Node >= 24 and
// >= 22.21 do it natively with NODE_USE_ENV_PROXY=1 (also set), so this file then does nothing.
// Trust comes from NODE_EXTRA_CA_CERTS (the mitmproxy CA added to Node's roots).
'use strict';
(function () {
  const [major, minor] = process.versions.node.split('.').map(Number);
  const proxy = process.env.HTTPS_PROXY || process.env.https_proxy;
  if (!proxy || major >= 24 || (major === 22 && minor >= 21)) return;
  const http = require('http');
  const https = require('https');
  const tls = require('tls');
  const url = new URL(proxy);
  const noProxy = (process.env.NO_PROXY || process.env.no_proxy || '')
    .split(',').map((s) => s.trim().replace(/^\./, '')).filter(Boolean);
  const direct = (host) => noProxy.some((n) => host === n || host.endsWith('.' + n));

  // CONNECT host:port through the proxy; cb(err, plainSocket).
  function tunnel(host, port, cb) {
    const target = `${host.includes(':') ? `[${host}]` : host}:${port}`;
    const req = http.request({
      host: url.hostname, port: url.port || 80, method: 'CONNECT', path: target,
      headers: { host: target },
    });
    req.once('connect', (res, socket) => {
      if (res.statusCode === 200) return cb(null, socket);
      socket.destroy();
      cb(new Error(`proxy ${proxy} refused CONNECT ${target}: ${res.statusCode}`));
    });
    req.once('error', cb);
    req.end();
  }

  class TunnelAgent extends https.Agent {
    createConnection(options, cb) {
      const host = options.host || options.hostname || 'localhost';
      if (direct(host)) return super.createConnection(options, cb);
      tunnel(host, options.port || 443, (err, socket) => {
        if (err) return cb(err);
        cb(null, tls.connect({ ...options, socket, servername: options.servername || host }));
      });
      return undefined;
    }
  }
  https.globalAgent = new TunnelAgent({ keepAlive: true });

  // fetch: Node 20's bundled undici has no env-proxy support; give its global Agent a connector
  // that tunnels (the Agent class is taken from the dispatcher fetch installs when first called;
  // a data: URL loads it without any network).
  const key = Symbol.for('undici.globalDispatcher.1');
  if (typeof globalThis.fetch !== 'function') return;
  if (!globalThis[key]) globalThis.fetch('data:,').catch(() => {});
  if (!globalThis[key]) return;
  const Agent = globalThis[key].constructor;
  globalThis[key] = new Agent({
    connect(opts, cb) {
      const host = opts.hostname;
      const port = opts.port || (opts.protocol === 'https:' ? 443 : 80);
      const plain = opts.protocol !== 'https:';
      if (direct(host) || plain) {
        const net = require('net');
        const s = plain
          ? net.connect({ host, port })
          : tls.connect({ host, port, servername: opts.servername || host, ALPNProtocols: ['http/1.1'] });
        s.once(plain ? 'connect' : 'secureConnect', () => cb(null, s)).once('error', cb);
        return;
      }
      tunnel(host, port, (err, socket) => {
        if (err) return cb(err);
        const s = tls.connect({ socket, servername: opts.servername || host, ALPNProtocols: ['http/1.1'] });
        s.once('secureConnect', () => cb(null, s)).once('error', cb);
      });
    },
  });
})();
