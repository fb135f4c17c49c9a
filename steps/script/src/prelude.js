// Skiff's JavaScript API for `script:` steps, in the style of google/zx, over the
// natives in engine.rs (`host`). Evaluated once per run before the user's script;
// returns the hooks the event loop needs (`tick`, `describe`).
//
// Every capability goes through `host`, which goes through the step's WASI imports:
// what the step was not granted fails there, with the host's message.
(function (host) {
  'use strict';

  const G = globalThis;
  const define = (name, value) =>
    Object.defineProperty(G, name, { value, writable: true, configurable: true, enumerable: false });
  const call = (native, request) => JSON.parse(native(JSON.stringify(request)));
  const DENIED = 'SKIFF_DENIED';

  // The script's working directory, relative to the workspace ('' is the workspace).
  let cwd = '';

  // ------------------------------------------------------------------ formatting
  const isProcessOutput = (v) => v instanceof ProcessOutput;

  function inspect(value, depth, seen) {
    switch (typeof value) {
      case 'string':
        return depth === 0 ? value : JSON.stringify(value);
      case 'number':
      case 'boolean':
      case 'undefined':
        return String(value);
      case 'bigint':
        return `${value}n`;
      case 'symbol':
        return value.toString();
      case 'function':
        return `[Function: ${value.name || '(anonymous)'}]`;
    }
    if (value === null) return 'null';
    if (isProcessOutput(value)) {
      return depth === 0 ? value.stdout.replace(/\n$/, '') : JSON.stringify(value.stdout);
    }
    if (value instanceof Error) return describeError(value);
    if (value instanceof Date) return isNaN(value) ? 'Invalid Date' : value.toISOString();
    if (value instanceof RegExp) return String(value);
    if (seen.includes(value)) return '[Circular]';
    if (depth > 4) return Array.isArray(value) ? '[Array]' : '[Object]';
    const next = seen.concat([value]);
    const inner = (v) => inspect(v, depth + 1, next);
    if (Array.isArray(value)) return value.length ? `[ ${value.map(inner).join(', ')} ]` : '[]';
    if (value instanceof Map) {
      const items = Array.from(value, ([k, v]) => `${inner(k)} => ${inner(v)}`);
      return `Map(${value.size}) {${items.length ? ` ${items.join(', ')} ` : ''}}`;
    }
    if (value instanceof Set) {
      const items = Array.from(value, inner);
      return `Set(${value.size}) {${items.length ? ` ${items.join(', ')} ` : ''}}`;
    }
    if (typeof value.then === 'function') return 'Promise { <pending> }';
    const keys = Object.keys(value);
    const key = (k) => (/^[A-Za-z_$][\w$]*$/.test(k) ? k : JSON.stringify(k));
    return keys.length ? `{ ${keys.map((k) => `${key(k)}: ${inner(value[k])}`).join(', ')} }` : '{}';
  }

  // console.log's formatting: %s %d %i %f %j %o %O %%, then the other arguments.
  function format(args) {
    const out = [];
    let rest = args;
    if (typeof args[0] === 'string' && args[0].includes('%')) {
      let i = 1;
      const first = args[0].replace(/%([sdifjoO%])/g, (m, c) => {
        if (c === '%') return '%';
        if (i >= args.length) return m;
        const v = args[i++];
        switch (c) {
          case 's':
            return typeof v === 'string' ? v : inspect(v, 1, []);
          case 'd':
          case 'i':
            return String(c === 'i' ? Math.trunc(Number(v)) : Number(v));
          case 'f':
            return String(parseFloat(v));
          case 'j':
            return JSON.stringify(v);
          default:
            return inspect(v, 1, []);
        }
      });
      out.push(first);
      rest = args.slice(i);
    } else if (args.length) {
      out.push(inspect(args[0], 0, []));
      rest = args.slice(1);
    }
    for (const v of rest) out.push(inspect(v, 0, []));
    return out.join(' ');
  }

  function describeError(e) {
    if (e instanceof Error) {
      const head = `${e.name || 'Error'}: ${e.message}`;
      const stack = typeof e.stack === 'string' ? e.stack.replace(/\s+$/, '') : '';
      return stack ? `${head}\n${stack}` : head;
    }
    return `Uncaught ${inspect(e, 1, [])}`;
  }

  const log = (level) => (...args) => host.log(level, format(args));
  const console = {
    log: log('info'),
    info: log('info'),
    debug: log('debug'),
    warn: log('warn'),
    error: log('error'),
    trace: log('debug'),
  };
  define('console', console);

  // ------------------------------------------------------------------ durations
  function duration(value, what) {
    if (typeof value === 'number' && value >= 0) return value;
    const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(String(value));
    if (!m) throw new TypeError(`${what}: \`${value}\` is not a duration; write 500, '500ms', '2s' or '1m'`);
    const n = Number(m[1]);
    return n * ({ ms: 1, s: 1000, m: 60000, h: 3600000 }[m[2] || 'ms']);
  }

  // ------------------------------------------------------------------ timers
  // Macrotasks: run by `tick` when the microtask queue is empty, earliest first.
  const timers = new Map();
  let timerId = 0;
  function addTimer(fn, ms, args, repeat) {
    if (typeof fn !== 'function') throw new TypeError('a timer needs a function');
    const id = ++timerId;
    const delay = Math.max(0, Number(ms) || 0);
    timers.set(id, { fn, args, due: Date.now() + delay, repeat: repeat ? Math.max(1, delay) : 0 });
    return id;
  }
  define('setTimeout', (fn, ms, ...args) => addTimer(fn, ms, args, false));
  define('setInterval', (fn, ms, ...args) => addTimer(fn, ms, args, true));
  define('clearTimeout', (id) => void timers.delete(id));
  define('clearInterval', (id) => void timers.delete(id));
  define('queueMicrotask', (fn) => void Promise.resolve().then(fn));

  const sleep = (ms) => new Promise((resolve) => addTimer(resolve, duration(ms, 'sleep'), [], false));
  define('sleep', sleep);

  // ------------------------------------------------------------------ $ (processes)
  // Host calls are synchronous, so `$` returns a lazy thenable: the command runs when
  // the result is first awaited (or `then`/`catch`/`finally` is called), after every
  // earlier command that has not run yet, so commands always run in the order they
  // were written. A command nobody awaits runs when the microtask queue next drains.
  // A failing command that nobody handles fails the step at the end of the script.
  const pending = [];

  class ProcessOutput extends Error {
    constructor(result, display) {
      const code = result.code === undefined ? null : result.code;
      let message;
      if (result.timed_out) message = `\`${display}\` timed out and was killed`;
      else if (code === null) message = `\`${display}\` was killed by signal ${result.signal}`;
      else message = `\`${display}\` exited with code ${code}`;
      const err = (result.stderr || '').trim();
      if (code !== 0 && err) message += `:\n${err.split('\n').slice(-20).join('\n')}`;
      super(message);
      this.name = 'ProcessOutput';
      this.stdout = result.stdout;
      this.stderr = result.stderr;
      this.exitCode = code;
      this.signal = result.signal === undefined ? null : result.signal;
      this.timedOut = !!result.timed_out;
      this.truncated = !!result.truncated;
      this.command = display;
    }
    get ok() {
      return this.exitCode === 0;
    }
    toString() {
      return this.stdout;
    }
    valueOf() {
      return this.stdout.trim();
    }
    text() {
      return this.stdout;
    }
    json() {
      return JSON.parse(this.stdout);
    }
    lines() {
      return this.stdout.split(/\r?\n/).filter((l, i, all) => l !== '' || i < all.length - 1);
    }
  }

  class ProcessPromise {
    constructor(argv, display) {
      this.argv = argv;
      this.command = display;
      this._cwd = cwd;
      this._env = Object.entries(process.env)
        .filter(([, v]) => v !== undefined)
        .map(([k, v]) => [k, String(v)]);
      this._nothrow = false;
      this._quiet = false;
      this._timeout = null;
      this._stdin = null;
      this._promise = null;
      this._site = '';
      pending.push(this);
    }
    nothrow(v = true) {
      this._nothrow = !!v;
      return this;
    }
    quiet(v = true) {
      this._quiet = !!v;
      return this;
    }
    timeout(t) {
      this._timeout = Math.ceil(duration(t, 'timeout'));
      return this;
    }
    stdin(text) {
      this._stdin = String(text);
      return this;
    }
    run() {
      if (this._promise) return this._promise;
      while (pending.length && pending[0] !== this) pending[0].run();
      const at = pending.indexOf(this);
      if (at >= 0) pending.splice(at, 1);
      const r = call(host.exec, {
        program: this.argv[0],
        args: this.argv.slice(1),
        env: this._env,
        cwd: this._cwd,
        quiet: this._quiet,
        timeout_ms: this._timeout,
        stdin: this._stdin,
      });
      if (r.error !== undefined) {
        const e = new Error(r.error);
        if (r.denied) e.code = DENIED;
        if (this._site) e.stack = this._site;
        this._promise = Promise.reject(e);
      } else {
        const out = new ProcessOutput(r, this.command);
        if (out.exitCode !== 0 && this._site) out.stack = this._site;
        this._promise = out.exitCode === 0 || this._nothrow ? Promise.resolve(out) : Promise.reject(out);
      }
      return this._promise;
    }
    then(onFulfilled, onRejected) {
      return this.run().then(onFulfilled, onRejected);
    }
    catch(onRejected) {
      return this.run().catch(onRejected);
    }
    finally(onFinally) {
      return this.run().finally(onFinally);
    }
  }

  function argsOf(value, i) {
    if (Array.isArray(value)) return value.flatMap((v) => argsOf(v, i));
    if (value === undefined || value === null) {
      throw new TypeError(`$: value #${i + 1} in the command is ${value}; pass a string (or '' for an empty argument)`);
    }
    if (isProcessOutput(value)) return [value.stdout.replace(/\r?\n$/, '')];
    return [String(value)];
  }

  function $(pieces, ...values) {
    if (!Array.isArray(pieces) || !Array.isArray(pieces.raw)) {
      throw new TypeError('$ is a template tag: write $`command ${argument}`');
    }
    const parts = Array.from(pieces, (p, i) => (p === undefined ? pieces.raw[i] : p));
    const { argv, display } = call(host.argv, { parts, values: values.map(argsOf) });
    const p = new ProcessPromise(argv, display);
    // Where the command was written: a failure's stack points there, not into this file.
    p._site = new Error().stack;
    return p;
  }
  define('$', $);
  define('ProcessOutput', ProcessOutput);
  define('ProcessPromise', ProcessPromise);

  // ------------------------------------------------------------------ workspace and cwd
  const workspacePath = (rel) => (rel ? `/workspace/${rel}` : '/workspace');
  function pathArg(p, what) {
    if (isProcessOutput(p)) p = p.stdout.replace(/\r?\n$/, '');
    if (typeof p !== 'string' && !(p instanceof String)) {
      throw new TypeError(`${what}: the path must be a string, not ${inspect(p, 1, [])}`);
    }
    return String(p);
  }
  function fsCall(op, path, extra) {
    const r = call((req) => host.fs(op, req), Object.assign({ cwd, path: pathArg(path, `fs.${op}`) }, extra));
    if (r.error !== undefined) {
      const e = new Error(r.error);
      e.code = r.code;
      throw e;
    }
    return r.ok;
  }

  define('cd', (dir) => {
    cwd = fsCall('cd', dir);
  });
  define('within', async (fn) => {
    const saved = cwd;
    try {
      return await fn();
    } finally {
      cwd = saved;
    }
  });

  const encoding = (opts, what) => {
    const enc = typeof opts === 'string' ? opts : opts && opts.encoding;
    if (enc && !/^utf-?8$/i.test(enc)) throw new TypeError(`${what}: only utf-8 text is supported, not ${enc}`);
  };
  const textOf = (data, what) => {
    if (typeof data === 'string') return data;
    if (isProcessOutput(data)) return data.stdout;
    if (data instanceof String) return String(data);
    throw new TypeError(`${what}: data must be a string (use JSON.stringify(...) for objects)`);
  };
  const sync = {
    readFileSync(path, opts) {
      encoding(opts, 'fs.readFile');
      return fsCall('read', path);
    },
    writeFileSync(path, data) {
      fsCall('write', path, { data: textOf(data, 'fs.writeFile') });
    },
    appendFileSync(path, data) {
      fsCall('append', path, { data: textOf(data, 'fs.appendFile') });
    },
    readdirSync(path = '.') {
      return fsCall('readdir', path);
    },
    existsSync(path) {
      return fsCall('exists', path);
    },
    mkdirSync(path, opts) {
      fsCall('mkdir', path, { recursive: !!(opts && opts.recursive) });
    },
    rmSync(path, opts) {
      fsCall('rm', path, { recursive: !!(opts && opts.recursive), force: !!(opts && opts.force) });
    },
    statSync(path) {
      const s = fsCall('stat', path);
      return { size: s.size, isFile: () => s.file, isDirectory: () => s.dir };
    },
  };
  const promises = {};
  for (const [name, fn] of Object.entries(sync)) {
    promises[name.slice(0, -4)] = async (...args) => fn(...args);
  }
  const fs = Object.assign({}, sync, promises, { promises: Object.assign({}, promises) });
  define('fs', fs);

  const path = {
    sep: '/',
    join: (...parts) => normalize(parts.filter((p) => p !== '').join('/')),
    dirname: (p) => {
      const s = String(p).replace(/\/+$/, '');
      const i = s.lastIndexOf('/');
      return i < 0 ? '.' : i === 0 ? '/' : s.slice(0, i);
    },
    basename: (p, ext) => {
      const b = String(p).replace(/\/+$/, '').split('/').pop();
      return ext && b.endsWith(ext) ? b.slice(0, -ext.length) : b;
    },
    extname: (p) => {
      const b = path.basename(p);
      const i = b.lastIndexOf('.');
      return i > 0 ? b.slice(i) : '';
    },
    resolve: (...parts) => normalize([process.cwd(), ...parts].reduce((a, p) => (p.startsWith('/') ? p : `${a}/${p}`))),
  };
  function normalize(p) {
    const abs = p.startsWith('/');
    const out = [];
    for (const s of p.split('/')) {
      if (s === '' || s === '.') continue;
      if (s === '..' && out.length && out[out.length - 1] !== '..') out.pop();
      else if (s !== '..' || !abs) out.push(s);
    }
    return (abs ? '/' : '') + out.join('/') || (abs ? '/' : '.');
  }
  define('path', path);

  // ------------------------------------------------------------------ process
  const process = {
    env: JSON.parse(host.env()),
    argv: ['skiff', 'script'],
    platform: 'wasi',
    cwd: () => workspacePath(cwd),
    exit: (code) => host.exit(code === undefined ? 0 : code),
  };
  define('process', process);

  // ------------------------------------------------------------------ small helpers
  define('echo', (first, ...rest) => {
    if (Array.isArray(first) && Array.isArray(first.raw)) {
      const text = first.reduce((s, p, i) => s + p + (i < rest.length ? inspect(rest[i], 0, []) : ''), '');
      host.log('info', text);
    } else {
      host.log('info', [first, ...rest].map((v) => inspect(v, 0, [])).join(' '));
    }
  });

  define('retry', async (count, a, b) => {
    const fn = typeof a === 'function' ? a : b;
    const delay = typeof a === 'function' ? 0 : duration(a, 'retry');
    if (typeof fn !== 'function') throw new TypeError('retry(count, [delay,] fn): fn must be a function');
    let last;
    for (let attempt = 1; attempt <= count; attempt++) {
      try {
        return await fn();
      } catch (e) {
        last = e;
        if (attempt < count) {
          host.log('warn', `attempt ${attempt} of ${count} failed: ${e && e.message ? e.message.split('\n')[0] : e}`);
          if (delay) await sleep(delay);
        }
      }
    }
    throw last;
  });

  // ------------------------------------------------------------------ fetch
  class Headers {
    constructor(init) {
      this._pairs = [];
      if (!init) return;
      const entries =
        init instanceof Headers ? init._pairs : Array.isArray(init) ? init : Object.entries(init);
      for (const [k, v] of entries) this.append(k, v);
    }
    append(k, v) {
      this._pairs.push([String(k).toLowerCase(), String(v)]);
    }
    set(k, v) {
      this.delete(k);
      this.append(k, v);
    }
    delete(k) {
      k = String(k).toLowerCase();
      this._pairs = this._pairs.filter(([n]) => n !== k);
    }
    get(k) {
      k = String(k).toLowerCase();
      const vs = this._pairs.filter(([n]) => n === k).map(([, v]) => v);
      return vs.length ? vs.join(', ') : null;
    }
    has(k) {
      return this.get(k) !== null;
    }
    entries() {
      return this._pairs.map((p) => p.slice())[Symbol.iterator]();
    }
    keys() {
      return this._pairs.map(([k]) => k)[Symbol.iterator]();
    }
    values() {
      return this._pairs.map(([, v]) => v)[Symbol.iterator]();
    }
    forEach(fn) {
      for (const [k, v] of this._pairs) fn(v, k, this);
    }
    [Symbol.iterator]() {
      return this.entries();
    }
  }

  class Response {
    constructor(r, url, redirected) {
      this.status = r.status;
      this.statusText = '';
      this.ok = r.status >= 200 && r.status < 300;
      this.url = url;
      this.redirected = redirected;
      this.headers = new Headers(r.headers);
      this._body = r.body;
      this.bodyUsed = false;
    }
    _take() {
      if (this.bodyUsed) throw new TypeError('the body of this response was already read');
      this.bodyUsed = true;
      return this._body;
    }
    async text() {
      return this._take();
    }
    async json() {
      return JSON.parse(this._take());
    }
  }

  function resolveUrl(base, location) {
    if (/^https?:\/\//i.test(location)) return location;
    const m = /^(https?:\/\/[^/?#]+)([^?#]*)/i.exec(base);
    if (!m) return location;
    if (location.startsWith('//')) return base.split(':')[0] + ':' + location;
    if (location.startsWith('/')) return m[1] + location;
    return m[1] + m[2].replace(/[^/]*$/, '') + location;
  }

  async function fetch(input, init = {}) {
    let url = String(input);
    let method = String(init.method || 'GET').toUpperCase();
    const headers = new Headers(init.headers)._pairs;
    let body = init.body === undefined || init.body === null ? null : init.body;
    if (body !== null && typeof body !== 'string') {
      throw new TypeError('fetch: `body` must be a string; use JSON.stringify(...) for JSON');
    }
    for (let hop = 0; ; hop++) {
      const r = call(host.fetch, { method, url, headers, body });
      if (r.error !== undefined) {
        const e = new TypeError(r.error);
        if (r.denied) e.code = DENIED;
        throw e;
      }
      const res = new Response(r, url, hop > 0);
      const location = res.headers.get('location');
      if ([301, 302, 303, 307, 308].includes(res.status) && location && init.redirect !== 'manual') {
        if (init.redirect === 'error') throw new TypeError(`fetch: ${url} redirects, and redirect is 'error'`);
        if (hop >= 20) throw new TypeError(`fetch: too many redirects from ${input}`);
        url = resolveUrl(url, location);
        if (res.status === 303 || ((res.status === 301 || res.status === 302) && method === 'POST')) {
          method = 'GET';
          body = null;
        }
        continue;
      }
      return res;
    }
  }
  define('fetch', fetch);
  define('Headers', Headers);
  define('Response', Response);

  // ------------------------------------------------------------------ core (GitHub Actions' toolkit names)
  const RESERVED = 'skiff.';
  const outputValue = (v) => (typeof v === 'string' ? v : v === undefined ? '' : typeof v === 'object' ? JSON.stringify(v) : String(v));
  let addedPath = [];
  const core = {
    getInput(name, opts) {
      const v = host.input(String(name));
      if ((v === undefined || v === '') && opts && opts.required) {
        throw new Error(`input \`${name}\` is required: set it under \`with:\` in the pipeline`);
      }
      const s = v === undefined ? '' : v;
      return opts && opts.trimWhitespace === false ? s : s.trim();
    },
    getBooleanInput(name, opts) {
      const v = core.getInput(name, opts);
      if (/^(true|True|TRUE)$/.test(v)) return true;
      if (/^(false|False|FALSE)$/.test(v) || v === '') return false;
      throw new TypeError(`input \`${name}\` is \`${v}\`: write true or false`);
    },
    setOutput(name, value) {
      name = String(name);
      if (!name || name.startsWith(RESERVED)) {
        throw new Error(`output name \`${name}\` is not allowed: names starting with \`${RESERVED}\` are reserved`);
      }
      host.setOutput(name, outputValue(value));
    },
    getSecret(name) {
      const v = host.secret(String(name));
      if (v === undefined) {
        const e = new Error(
          `secret \`${name}\` was not granted to this step: grant it with \`permissions: { secrets: [${name}] }\``,
        );
        e.code = DENIED;
        throw e;
      }
      return v;
    },
    // Environment and PATH for later steps; the executor accepts them only from a step
    // granted `process` (they steer later processes).
    exportVariable(name, value) {
      host.setOutput(`${RESERVED}env.${name}`, outputValue(value));
      process.env[name] = outputValue(value);
    },
    addPath(dir) {
      addedPath.push(String(dir));
      host.setOutput(`${RESERVED}path`, addedPath.join('\n'));
      process.env.PATH = process.env.PATH ? `${dir}:${process.env.PATH}` : String(dir);
    },
    setFailed(message) {
      const text = message instanceof Error ? message.message : String(message);
      host.log('error', text);
      host.fail(text);
    },
    summary: (markdown) => host.summary(String(markdown)),
    debug: log('debug'),
    info: log('info'),
    notice: log('info'),
    warning: log('warn'),
    error: log('error'),
  };
  define('core', core);

  // ------------------------------------------------------------------ event loop hooks
  // One macrotask: an un-awaited command, else the earliest timer (sleeping until it is
  // due). False when there is nothing left to do.
  function tick() {
    if (pending.length) {
      pending[0].run();
      return true;
    }
    let next = null;
    for (const [id, t] of timers) if (!next || t.due < next[1].due) next = [id, t];
    if (!next) return false;
    const [id, t] = next;
    const wait = t.due - Date.now();
    if (wait > 0) host.sleep(wait);
    if (t.repeat) t.due = Date.now() + t.repeat;
    else timers.delete(id);
    t.fn(...t.args);
    return true;
  }

  function describe(e) {
    return JSON.stringify({ text: describeError(e), denied: !!(e && e.code === DENIED) });
  }

  return { tick, describe };
});
