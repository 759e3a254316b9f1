// The Node.js language runtime of EasyFaaS (no npm packages).
//
// Implements the runtime process contract (runner/runtimes/README.md): fd 3 is a listening unix
// socket, fd 4 the init-status pipe. The runtime channel's framing mirrors easyfaas/frames.py:
// a 4-byte big-endian length, then one UTF-8 JSON object.
//
// Handler "file.export" (file may have a sub-path, "src/app.handler"), loaded from the task root
// with require (or import() for ES modules). Callback, async and promise handlers are supported;
// console output is captured per request with AsyncLocalStorage.
'use strict';

const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
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

function readSettings(env) {
  return {
    handler: env.EASYFAAS_HANDLER || env._HANDLER || 'index.handler',
    taskRoot: env.EASYFAAS_TASK_ROOT || '/var/task',
    functionName: env.EASYFAAS_FUNCTION_NAME || env.AWS_LAMBDA_FUNCTION_NAME || '',
    functionVersion: env.EASYFAAS_FUNCTION_VERSION || env.AWS_LAMBDA_FUNCTION_VERSION || '$LATEST',
    functionBrn: env.EASYFAAS_FUNCTION_BRN || '',
    memoryMb: parseInt(env.EASYFAAS_MEMORY_SIZE || env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE || '128', 10) || 128,
    timeoutS: parseInt(env.EASYFAAS_TIMEOUT || '3', 10) || 3,
  };
}

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

function captureConsole() {
  for (const name of ['log', 'info', 'debug', 'error', 'warn', 'trace']) {
    const original = console[name].bind(console);
    console[name] = (...args) => {
      const store = requestStore.getStore();
      if (!store) { original(...args); return; }
      let text = util.format(...args);
      if (name === 'trace') text = `Trace: ${text}\n${new Error().stack.split('\n').slice(2).join('\n')}`;
      store.logs.write(text + '\n');
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
  const slash = handler.lastIndexOf('/');
  const dir = handler.slice(0, slash + 1);
  const base = handler.slice(slash + 1);
  const dot = base.indexOf('.');
  if (dot <= 0 || dot === base.length - 1) {
    throw new InitError({ errorMessage: `Bad handler ${handler}`, errorType: 'Runtime.MalformedHandlerName', stackTrace: [] });
  }
  return { module: dir + base.slice(0, dot), exportPath: base.slice(dot + 1).split('.') };
}

function isModuleNotFound(err, file) {
  return err && err.code === 'MODULE_NOT_FOUND' && typeof err.message === 'string'
    && err.message.includes(`'${file}'`);
}

async function loadModule(taskRoot, moduleName) {
  const file = path.resolve(taskRoot, moduleName);
  try {
    return require(file);
  } catch (err) {
    if (err && err.code === 'ERR_REQUIRE_ESM') return import(pathToFileURL(require.resolve(file)).href);
    if (!isModuleNotFound(err, file)) throw err;
  }
  for (const ext of ['.mjs', '.cjs']) {
    if (fs.existsSync(file + ext)) return import(pathToFileURL(file + ext).href);
  }
  const err = new Error(`Cannot find module '${moduleName}'`);
  err.code = 'MODULE_NOT_FOUND';
  throw err;
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

function makeContext(frame, settle) {
  const deadline = typeof frame.deadline_ms === 'number' && frame.deadline_ms > 0
    ? frame.deadline_ms : Date.now() + settings.timeoutS * 1000;
  const id = String(frame.id === undefined ? '' : frame.id);
  return {
    awsRequestId: id,
    requestId: String(frame.request_id || id),
    functionName: settings.functionName,
    functionVersion: settings.functionVersion,
    invokedFunctionArn: settings.functionBrn,
    memoryLimitInMB: String(settings.memoryMb),
    logGroupName: `/easyfaas/${settings.functionName}`,
    logStreamName: os.hostname(),
    identity: undefined,
    clientContext: undefined,
    callbackWaitsForEmptyEventLoop: true,
    getRemainingTimeInMillis: () => Math.max(0, Math.floor(deadline - Date.now())),
    succeed: (result) => settle(null, result),
    fail: (err) => settle(err === undefined || err === null ? new Error('handled') : err),
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
    const store = { logs: new LogTail(LOG_TAIL) };
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
    requestStore.run(store, () => {
      const context = makeContext(frame, settle);
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

function encodeResponse(response) {
  try {
    return encode(response);
  } catch (err) {
    return encode({ id: response.id, ok: false, fatal: false,
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
