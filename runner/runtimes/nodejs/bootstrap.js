// The Node.js language runtime of EasyFaaS (no npm packages).
//
// Implements the runtime process contract (runner/runtimes/README.md): fd 3 is a listening unix
// socket, fd 4 the init-status pipe. The runtime channel's framing mirrors easyfaas/frames.py:
// a 4-byte big-endian length, then one UTF-8 JSON object.
//
// Handler "file.export" (file may have a sub-path, "src/app.handler"), loaded from the task root as
// Lambda's Node.js runtime resolves it: CommonJS with require, ES modules (.mjs, or .js under a
// package.json with "type": "module", top-level await included) with import(). Callback, async and
// promise handlers, the context object and the console line format are Lambda's; console output
// is captured per request with AsyncLocalStorage.
'use strict';

const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');
const util = require('node:util');
const { AsyncLocalStorage } = require('node:async_hooks');
const { pathToFileURL } = require('node:url');

const LISTENER_FD = 3;
const STATUS_FD = 4;
const HEADER = 4;
const MAX_FRAME = 16 * 1024 * 1024;
const LOG_TAIL = 4096;
const TEXT = 'text/plain; charset=utf-8';
const JSON_TYPE = 'application/json';

// Lambda's console levels, lowest first; AWS_LAMBDA_LOG_LEVEL hides the ones below it.
const LEVELS = ['TRACE', 'DEBUG', 'INFO', 'WARN', 'ERROR', 'FATAL'];

function readSettings(env) {
  const functionName = env.AWS_LAMBDA_FUNCTION_NAME || env.EASYFAAS_FUNCTION_NAME || '';
  const minLevel = LEVELS.indexOf(String(env.AWS_LAMBDA_LOG_LEVEL || '').toUpperCase());
  return {
    handler: env.EASYFAAS_HANDLER || env._HANDLER || 'index.handler',
    taskRoot: env.EASYFAAS_TASK_ROOT || '/var/task',
    functionName,
    functionVersion: env.AWS_LAMBDA_FUNCTION_VERSION || env.EASYFAAS_FUNCTION_VERSION || '$LATEST',
    functionBrn: env.EASYFAAS_FUNCTION_BRN || '',
    memoryMb: parseInt(env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE || env.EASYFAAS_MEMORY_SIZE || '128', 10) || 128,
    timeoutS: parseInt(env.EASYFAAS_TIMEOUT || '3', 10) || 3,
    logGroupName: env.AWS_LAMBDA_LOG_GROUP_NAME || `/aws/lambda/${functionName}`,
    logStreamName: env.AWS_LAMBDA_LOG_STREAM_NAME || '',
    jsonLogs: String(env.AWS_LAMBDA_LOG_FORMAT || '').toUpperCase() === 'JSON',
    minLevel: minLevel < 0 ? 0 : minLevel,
  };
}

// process.env's own setter calls setenv(3), and glibc never frees the string a setenv replaces:
// a new _X_AMZN_TRACE_ID per invocation grew a warm runtime ~180 bytes a call until its memory
// limit killed it. A plain object under process.env's rules (values stored as strings) holds the
// environment instead; child_process reads process.env, so children still get every variable.
// TZ still goes to the real environment too: Node resets its time zone when that one changes.
function plainEnvironment(real) {
  return new Proxy(Object.assign({}, real), {
    set(target, key, value) {
      target[key] = String(value);
      if (key === 'TZ') real.TZ = target[key];
      return true;
    },
    defineProperty(target, key, descriptor) {
      const d = 'value' in descriptor ? { ...descriptor, value: String(descriptor.value) } : descriptor;
      return Reflect.defineProperty(target, key, d);
    },
    deleteProperty(target, key) {
      if (key === 'TZ') delete real.TZ;
      return delete target[key];
    },
  });
}
process.env = plainEnvironment(process.env);

let settings = readSettings(process.env);

// ---- standby (pre-started) mode ------------------------------------------------------------------
//
// Starting node is most of a Node.js cold start (~35-40 ms of exec and V8 bootstrap here, against
// ~2 ms to load a handler). With EASYFAAS_STANDBY_FD=<fd> the runtime can be started before any
// function is assigned to its sandbox: it loads node and this file, then blocks reading one JSON
// line {"env": {...}} from that fd, takes it as its whole environment, and carries on as if it had
// been started with it. The funclet keeps such runtimes standing by in idle sandboxes (runner op
// "prestart"); a function that sets variables only read at process start (NODE_OPTIONS, LD_*)
// gets a freshly exec'd runtime instead (runner/init.py).

function awaitAssignment(fd) {
  const buf = Buffer.alloc(65536);
  let data = '';
  while (!data.includes('\n')) {
    let n;
    try {
      n = fs.readSync(fd, buf, 0, buf.length, null);
    } catch (err) {
      if (err.code === 'EAGAIN') { Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1); continue; }
      throw err;
    }
    if (n === 0) break;
    data += buf.toString('utf8', 0, n);
  }
  try { fs.closeSync(fd); } catch (err) { /* already closed */ }
  const line = data.split('\n')[0];
  if (!line) process.exit(0); // the runner went away before assigning a function
  const assignment = JSON.parse(line);
  for (const key of Object.keys(process.env)) delete process.env[key];
  Object.assign(process.env, assignment.env || {});
  // Module search paths were computed at start from the environment we had then.
  if (process.env.NODE_PATH) require('module')._initPaths();
  settings = readSettings(process.env);
}

// ---- per-request console capture -----------------------------------------------------------------

const requestStore = new AsyncLocalStorage();

class LogTail {
  constructor(limit) { this.limit = limit; this.parts = []; this.size = 0; }
  write(text) {
    this.parts.push(text);
    this.size += text.length;
    if (this.size > 2 * this.limit) {
      const joined = this.parts.join('').slice(-this.limit);
      this.parts = [joined];
      this.size = joined.length;
    }
  }
  text() { return this.parts.join('').slice(-this.limit); }
}

// Lambda's line: "<ISO time>\t<request id>\t<LEVEL>\t<message>\n", or with
// AWS_LAMBDA_LOG_FORMAT=JSON one object {timestamp, level, requestId, message} (+ the error fields
// of an Error argument).
function formatText(requestId, level, args) {
  return `${new Date().toISOString()}\t${requestId}\t${level}\t${util.format(...args)}\n`;
}

function errorFields(err) {
  return { errorType: err.name, errorMessage: err.message,
    stackTrace: typeof err.stack === 'string' ? err.stack.split('\n') : [] };
}

function formatJson(requestId, level, args) {
  const line = { timestamp: new Date().toISOString(), level, requestId };
  if (args.length === 1) {
    const [only] = args;
    if (only instanceof Error) {
      Object.assign(line, { message: only.stack || String(only) }, errorFields(only));
      return JSON.stringify(line) + '\n';
    }
    line.message = only;
    try {
      return JSON.stringify(line) + '\n';
    } catch (err) {
      line.message = util.format(only);
      return JSON.stringify(line) + '\n';
    }
  }
  line.message = util.format(...args);
  const err = args.find((arg) => arg instanceof Error);
  if (err) Object.assign(line, errorFields(err));
  return JSON.stringify(line) + '\n';
}

function captureConsole() {
  const methods = { log: 'INFO', info: 'INFO', debug: 'DEBUG', warn: 'WARN', error: 'ERROR', trace: 'TRACE',
    fatal: 'FATAL' };
  for (const [name, level] of Object.entries(methods)) {
    console[name] = (...args) => {
      if (LEVELS.indexOf(level) < settings.minLevel) return;
      const store = requestStore.getStore();
      const requestId = store ? store.requestId : 'undefined';
      const line = settings.jsonLogs ? formatJson(requestId, level, args) : formatText(requestId, level, args);
      if (store) store.logs.write(line);
      else process.stdout.write(line);
    };
  }
}

// ---- handler loading -----------------------------------------------------------------------------

class InitError extends Error {
  constructor(error) { super(error.errorMessage); this.error = error; }
}

function errorObject(err, type, message) {
  if (err === null || err === undefined) err = new Error(String(err));
  if (typeof err !== 'object') {
    return { errorMessage: String(err), errorType: type || (typeof err === 'string' ? 'string' : typeof err), stackTrace: [] };
  }
  const stack = typeof err.stack === 'string'
    ? err.stack.split('\n').slice(1).map((line) => line.trim())
      .filter((line) => line && !line.includes(__filename) && !line.includes('node:internal')) : [];
  return {
    errorMessage: message !== undefined ? message : (err.message !== undefined ? String(err.message) : String(err)),
    errorType: type || err.name || (err.constructor && err.constructor.name) || 'Error',
    stackTrace: stack,
  };
}

function splitHandler(handler) {
  if (handler.includes('..')) {
    throw new InitError({ errorMessage: `'${handler}' is not a valid handler name. Use absolute paths when specifying root directories in handler names.`,
      errorType: 'Runtime.MalformedHandlerName', stackTrace: [] });
  }
  const slash = handler.lastIndexOf('/');
  const dir = handler.slice(0, slash + 1);
  const base = handler.slice(slash + 1);
  const dot = base.indexOf('.');
  if (dot <= 0 || dot === base.length - 1) {
    throw new InitError({ errorMessage: `Bad handler ${handler}`, errorType: 'Runtime.MalformedHandlerName', stackTrace: [] });
  }
  return { module: dir + base.slice(0, dot), exportPath: base.slice(dot + 1).split('.') };
}

// The nearest package.json above `dir` says "type": "module" (the search stops at node_modules).
function isEsmPackage(dir) {
  for (let current = dir; ; current = path.dirname(current)) {
    if (path.basename(current) === 'node_modules') return false;
    try {
      return JSON.parse(fs.readFileSync(path.join(current, 'package.json'), 'utf8')).type === 'module';
    } catch (err) {
      if (err.code !== 'ENOENT' && err.code !== 'ENOTDIR') return false;
    }
    if (path.dirname(current) === current) return false;
  }
}

function importFile(file) { return import(pathToFileURL(file).href); }

function requireOrImport(file) {
  try {
    return require(file);
  } catch (err) {
    if (err && err.code === 'ERR_REQUIRE_ESM') return importFile(require.resolve(file));
    throw err;
  }
}

// Lambda's order: <module> as is, <module>.js (import() under "type": "module"), .mjs, .cjs,
// then Node's own resolution from the task root.
async function loadModule(taskRoot, moduleName) {
  const file = path.resolve(taskRoot, moduleName);
  const isFile = (candidate) => { try { return fs.statSync(candidate).isFile(); } catch (err) { return false; } };
  if (isFile(file)) return requireOrImport(file);
  if (isFile(`${file}.js`)) return isEsmPackage(path.dirname(file)) ? importFile(`${file}.js`) : requireOrImport(`${file}.js`);
  if (isFile(`${file}.mjs`)) return importFile(`${file}.mjs`);
  if (isFile(`${file}.cjs`)) return require(`${file}.cjs`);
  let resolved;
  try {
    resolved = require.resolve(moduleName.startsWith('.') ? file : moduleName, { paths: [taskRoot] });
  } catch (cause) {
    const err = new Error(`Cannot find module '${moduleName}'`);
    err.code = 'MODULE_NOT_FOUND';
    throw err;
  }
  return requireOrImport(resolved);
}

async function loadHandler() {
  const { module: moduleName, exportPath } = splitHandler(settings.handler);
  let mod;
  try {
    mod = await loadModule(settings.taskRoot, moduleName);
  } catch (err) {
    if (err instanceof SyntaxError) {
      throw new InitError(errorObject(err, 'Runtime.UserCodeSyntaxError', `${err.name}: ${err.message}`));
    }
    throw new InitError(errorObject(err, 'Runtime.ImportModuleError',
      `Error: ${err && err.message !== undefined ? err.message : String(err)}`));
  }
  let fn = mod;
  for (const key of exportPath) fn = fn === null || fn === undefined ? undefined : fn[key];
  if (fn === undefined && mod && mod.default && typeof mod.default === 'object') {
    fn = mod.default;
    for (const key of exportPath) fn = fn === null || fn === undefined ? undefined : fn[key];
  }
  if (typeof fn !== 'function') {
    throw new InitError({
      errorMessage: `${moduleName}.${exportPath.join('.')} is undefined or not exported`,
      errorType: 'Runtime.HandlerNotFound', stackTrace: [],
    });
  }
  return fn;
}

// ---- the context object --------------------------------------------------------------------------

function requestIdOf(frame) {
  return String(frame.request_id || (frame.id === undefined ? '' : frame.id));
}

// The Client-Context and Cognito identity JSON of an invocation; bad JSON fails it, as in Lambda.
function parseContextJson(text, what) {
  if (!text) return undefined;
  try {
    return JSON.parse(text);
  } catch (err) {
    throw Object.assign(new Error(`Unable to parse ${what} JSON: ${err.message}`),
      { name: 'Runtime.LambdaContextUnmarshalError' });
  }
}

// Lambda's context object; awsRequestId is the invocation's request id (the caller's
// X-easyfaas-Request-Id), requestId the same for handlers written for EasyFaaS.
function makeContext(frame, settle) {
  const deadline = typeof frame.deadline_ms === 'number' && frame.deadline_ms > 0
    ? frame.deadline_ms : Date.now() + settings.timeoutS * 1000;
  const requestId = requestIdOf(frame);
  const identity = parseContextJson(frame.identity, 'Cognito Identity');
  const clientContext = parseContextJson(frame.client_context, 'Client Context');
  return {
    awsRequestId: requestId,
    requestId,
    functionName: settings.functionName,
    functionVersion: settings.functionVersion,
    invokedFunctionArn: frame.function_arn || settings.functionBrn,
    memoryLimitInMB: String(settings.memoryMb),
    logGroupName: settings.logGroupName,
    logStreamName: settings.logStreamName,
    identity: identity && { cognitoIdentityId: identity.cognitoIdentityId, cognitoIdentityPoolId: identity.cognitoIdentityPoolId },
    clientContext,
    callbackWaitsForEmptyEventLoop: true,
    getRemainingTimeInMillis: () => deadline - Date.now(),
    succeed: (result) => settle(null, result),
    fail: (err) => settle(err === undefined || err === null ? 'handled' : err),
    done: (err, result) => settle(err, result),
  };
}

function marshal(result) {
  if (typeof result === 'string') return { result, content_type: TEXT };
  const text = result === undefined ? 'null' : JSON.stringify(result);
  return { result: text === undefined ? 'null' : text, content_type: JSON_TYPE };
}

// Requests in flight, so that a crash of the process can still answer them.
const inflight = new Map();

function invoke(handler, frame) {
  return new Promise((resolve) => {
    const store = { logs: new LogTail(LOG_TAIL), requestId: requestIdOf(frame) };
    let settled = false;
    const token = {};
    const finish = (response) => {
      if (settled) return;
      settled = true;
      inflight.delete(token);
      if (frame.log) response.logs = store.logs.text();
      resolve(response);
    };
    const settle = (err, result) => {
      if (err !== null && err !== undefined) {
        finish({ id: frame.id, ok: false, error: errorObject(err), fatal: false });
        return;
      }
      let marshalled;
      try {
        marshalled = marshal(result);
      } catch (e) {
        finish({ id: frame.id, ok: false, fatal: false,
          error: { errorMessage: `Unable to stringify response body: ${e.message}`, errorType: 'Runtime.MarshalError', stackTrace: [] } });
        return;
      }
      finish({ id: frame.id, ok: true, ...marshalled });
    };
    inflight.set(token, (error) => finish({ id: frame.id, ok: false, error, fatal: true }));
    let event;
    try {
      event = JSON.parse(frame.event === undefined ? '{}' : frame.event);
    } catch (e) {
      event = frame.event;
    }
    if (frame.trace_id) process.env._X_AMZN_TRACE_ID = frame.trace_id;
    else delete process.env._X_AMZN_TRACE_ID;
    requestStore.run(store, () => {
      let context;
      try {
        context = makeContext(frame, settle);
      } catch (err) {
        settle(err);
        return;
      }
      const callback = (err, result) => settle(err, result);
      let returned;
      try {
        returned = handler(event, context, callback);
      } catch (err) {
        settle(err);
        return;
      }
      if (returned && typeof returned.then === 'function') {
        returned.then((value) => settle(null, value), (err) => settle(err === undefined ? new Error('undefined') : err));
      } else if (handler.length < 3) {
        // A synchronous (event, context) handler: its return value is the result, unless it
        // already answered through context.succeed/fail/done.
        setImmediate(() => settle(null, returned));
      }
    });
  });
}

// ---- serving -------------------------------------------------------------------------------------

function encode(message) {
  const body = Buffer.from(JSON.stringify(message), 'utf8');
  if (body.length > MAX_FRAME) throw new RangeError(`frame of ${body.length} bytes exceeds ${MAX_FRAME}`);
  const header = Buffer.allocUnsafe(HEADER);
  header.writeUInt32BE(body.length, 0);
  return Buffer.concat([header, body]);
}

// memory_peak_kb: the process's high-water resident memory (ru_maxrss, KiB), the invocation's
// "Max Memory Used"; one getrusage per response. exec keeps the parent's resident set at fork as
// the new program's ru_maxrss: while ours is still that inherited figure, VmHWM of
// /proc/self/status (this process's own; the file kept open) is read instead
// (runner/runtimes/python/memory_peak.py).
const statusBuffer = Buffer.alloc(8192);
let statusFd = -1;

function ownPeakKb() {
  try {
    const n = fs.readSync(statusFd, statusBuffer, 0, statusBuffer.length, 0);
    const match = /\nVmHWM:\s*(\d+)/.exec(statusBuffer.toString('latin1', 0, n));
    return match ? parseInt(match[1], 10) : 0;
  } catch (err) {
    return 0;
  }
}

const inheritedMaxRss = (() => {
  const rss = process.resourceUsage().maxRSS;
  try { statusFd = fs.openSync('/proc/self/status', 'r'); } catch (err) { return 0; }
  const own = ownPeakKb(); // read after: ours can only have grown since
  if (own && rss > own) return rss;
  fs.closeSync(statusFd);
  statusFd = -1;
  return 0;
})();

function memoryPeakKb() {
  const rss = process.resourceUsage().maxRSS;
  return rss > inheritedMaxRss ? rss : (ownPeakKb() || rss);
}

function encodeResponse(response) {
  const memoryPeak = memoryPeakKb();
  response.memory_peak_kb = memoryPeak;
  try {
    return encode(response);
  } catch (err) {
    return encode({ id: response.id, ok: false, fatal: false, memory_peak_kb: memoryPeak,
      error: { errorMessage: String(err.message), errorType: 'Runtime.ResponseSizeTooLarge', stackTrace: [] } });
  }
}

// Accumulates stream chunks without copying them until a whole frame is there.
class FrameReader {
  constructor() { this.chunks = []; this.length = 0; this.need = -1; }
  push(chunk) { this.chunks.push(chunk); this.length += chunk.length; }
  take(n) {
    const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks, this.length);
    const head = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length ? [rest] : [];
    this.length = rest.length;
    return head;
  }
  next() {
    if (this.need < 0) {
      if (this.length < HEADER) return undefined;
      this.need = this.take(HEADER).readUInt32BE(0);
      if (this.need > MAX_FRAME) throw new RangeError(`frame of ${this.need} bytes exceeds ${MAX_FRAME}`);
    }
    if (this.length < this.need) return undefined;
    const body = this.take(this.need);
    this.need = -1;
    const message = JSON.parse(body.toString('utf8'));
    if (message === null || typeof message !== 'object' || Array.isArray(message)) throw new TypeError('frame is not a JSON object');
    return message;
  }
}

function serveConnection(conn, answer) {
  const reader = new FrameReader();
  const queue = [];
  let busy = false;
  const pump = () => {
    if (busy || queue.length === 0 || conn.destroyed) return;
    busy = true;
    const frame = queue.shift();
    Promise.resolve(answer(frame)).then((response) => {
      busy = false;
      if (!conn.destroyed) conn.write(encodeResponse(response));
      pump();
    });
  };
  conn.on('data', (chunk) => {
    reader.push(chunk);
    try {
      for (let frame = reader.next(); frame !== undefined; frame = reader.next()) queue.push(frame);
    } catch (err) {
      conn.destroy();
      return;
    }
    pump();
  });
  conn.on('error', () => conn.destroy());
}

function writeStatus(status) {
  try {
    fs.writeSync(STATUS_FD, JSON.stringify(status) + '\n');
    fs.closeSync(STATUS_FD);
  } catch (err) {
    // no status pipe: started by hand
  }
}

function fatalAnswer(error) {
  return (frame) => {
    const response = { id: frame.id, ok: false, error, fatal: true };
    if (frame.log) response.logs = '';
    return response;
  };
}

function crash(err) {
  // User code threw outside any handler's promise chain: answer what is in flight, then exit
  // (the runner reports the exit and the controller recycles the slot).
  const error = errorObject(err);
  for (const fail of Array.from(inflight.values())) fail(error);
  process.stderr.write(`easyfaas nodejs runtime: uncaught ${error.errorType}: ${error.errorMessage}\n`);
  setTimeout(() => process.exit(129), 50);
}

async function main() {
  const standbyFd = process.env.EASYFAAS_STANDBY_FD;
  if (standbyFd) awaitAssignment(parseInt(standbyFd, 10));
  try { process.chdir(settings.taskRoot); } catch (err) { /* keep the cwd we were given */ }
  captureConsole();
  let answer;
  try {
    const handler = await loadHandler();
    answer = (frame) => invoke(handler, frame);
    writeStatus({ ok: true });
  } catch (err) {
    const error = err instanceof InitError ? err.error : errorObject(err, 'Runtime.InitError');
    writeStatus({ ok: false, error });
    answer = fatalAnswer(error);
  }
  process.on('uncaughtException', crash);
  process.on('unhandledRejection', crash);
  const server = net.createServer({ allowHalfOpen: false }, (conn) => serveConnection(conn, answer));
  server.on('error', (err) => {
    process.stderr.write(`easyfaas nodejs runtime: listener failed: ${err.message}\n`);
    process.exit(1);
  });
  server.listen({ fd: LISTENER_FD });
}

main();
