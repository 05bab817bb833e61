/**
 * The API client against a real HTTP server on a loopback port (Node's http module),
 * through ServerConnection and the real fetch / XMLHttpRequest.
 */
import * as http from 'http';
import { AddressInfo } from 'net';

import { ServerConnection } from '@jupyterlab/services';

import { nullTranslator } from '@jupyterlab/translation';

import { errorFromResponse, normalizeMe, PaiApi, PaiApiError, xsrfToken } from '../api';
import { PaiModel } from '../model';

interface ISeen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

const LOG = 'epoch 1 loss=0.9\nepoch 2 loss=0.5 é\ndone\n';

let server: http.Server;
let base: string;
const seen: ISeen[] = [];
const store = new Map<string, Buffer>();

function send(res: http.ServerResponse, status: number, body: unknown, type = 'application/json') {
  res.writeHead(status, { 'Content-Type': type, 'Access-Control-Allow-Origin': '*' });
  res.end(typeof body === 'string' ? body : JSON.stringify(body));
}

function handle(req: http.IncomingMessage, res: http.ServerResponse, body: Buffer) {
  const url = new URL(req.url ?? '/', 'http://x');
  const path = url.pathname.replace(/^\/base\/pai\/api\//, '');
  if (req.method === 'OPTIONS') {
    res.writeHead(204, {
      'Access-Control-Allow-Origin': '*',
      'Access-Control-Allow-Methods': 'GET,PUT,POST,DELETE,PATCH',
      'Access-Control-Allow-Headers': 'Authorization, Content-Type, X-XSRFToken'
    });
    res.end();
    return;
  }
  if (path === 'v1/me') {
    return send(res, 200, { name: 'alice', workspaces: { 'team-a': 'developer', 'team b': 'viewer' } });
  }
  if (path === 'v1/profiles') {
    return send(res, 200, { profiles: [{ slug: 'cpu-small', display_name: 'CPU small', default: true }] });
  }
  if (path === 'v1/workspaces/team-a/jobs' && req.method === 'GET') {
    return send(res, 200, {
      jobs: [{ id: 'j1', state: 'running', workspace: 'team-a', owner: 'alice', spec: {} }],
      total: 7
    });
  }
  if (path === 'v1/workspaces/team-a/jobs/missing') {
    return send(res, 404, { error: { code: 'not_found', message: 'job missing not found in team-a' } });
  }
  if (path === 'v1/workspaces/team-a/jobs/j1/cancel' && req.method === 'POST') {
    return send(res, 200, { id: 'j1', state: 'cancelled' });
  }
  if (path === 'v1/workspaces/team-a/jobs/j1/logs') {
    const bytes = Buffer.from(LOG, 'utf-8');
    const offset = Number(url.searchParams.get('offset') ?? 0);
    const rest = bytes.subarray(offset);
    res.writeHead(200, { 'Content-Type': 'text/plain; charset=utf-8' });
    // Split inside the two-byte 'é' to check the decoder keeps multi-byte characters whole.
    const cut = rest.indexOf(0xc3) >= 0 ? rest.indexOf(0xc3) + 1 : rest.length;
    res.write(rest.subarray(0, cut));
    setTimeout(() => res.end(rest.subarray(cut)), 30);
    return;
  }
  if (path === 'notebook-jobs' && req.method === 'POST') {
    const request = JSON.parse(body.toString());
    if (!request.path) {
      return send(res, 400, { error: { code: 'bad_request', message: 'path: required' } });
    }
    return send(res, 201, { id: 'new-job', state: 'queued', spec: { parameters: request.parameters } });
  }
  if (path.startsWith('v1/workspaces/team-a/files')) {
    const key = decodeURIComponent(path.slice('v1/workspaces/team-a/files'.length).replace(/^\//, ''));
    if (req.method === 'PUT') {
      store.set(key, body);
      return send(res, 201, { path: key, size: body.length });
    }
    if (req.method === 'DELETE') {
      store.delete(key);
      res.writeHead(204, { 'Access-Control-Allow-Origin': '*' });
      return res.end();
    }
    if (key === '' || key === 'datasets') {
      return send(res, 200, {
        entries: Array.from(store.entries()).map(([name, data]) => ({ name, path: name, type: 'file', size: data.length }))
      });
    }
    if (store.has(key)) {
      res.writeHead(200, { 'Content-Type': 'application/octet-stream' });
      return res.end(store.get(key));
    }
    return send(res, 404, { error: { code: 'not_found', message: `${key} does not exist` } });
  }
  if (path === 'v1/workspaces/team-a/models/iris/aliases/production') {
    return send(res, 422, {
      error: { code: 'gate_failed', message: 'gate accuracy >= 0.99 failed: accuracy = 0.95' }
    });
  }
  if (path === 'v1/workspaces/team-a/deployments') {
    return send(res, 502, '<html><body>Bad gateway</body></html>', 'text/html');
  }
  return send(res, 404, { error: { code: 'not_found', message: `no route ${path}` } });
}

beforeAll(async () => {
  server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', c => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body });
      handle(req, res, body);
    });
  });
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/base/`;
});

afterAll(async () => {
  await new Promise(resolve => server.close(resolve));
});

function client(token = 'secret-token'): PaiApi {
  return new PaiApi(
    ServerConnection.makeSettings({ baseUrl: base, wsUrl: base.replace('http', 'ws'), token, appendToken: false })
  );
}

/** The last request, without the cache-busting timestamp ServerConnection adds to GETs. */
function last(): ISeen {
  const request = seen[seen.length - 1];
  return { ...request, url: request.url.replace(/[?&]\d{12,}$/, '') };
}

describe('PaiApi', () => {
  it('sends the token and normalises /me workspaces', async () => {
    const me = await client().me();
    expect(me.name).toBe('alice');
    expect(me.workspaces).toEqual([
      { name: 'team-a', role: 'developer' },
      { name: 'team b', role: 'viewer' }
    ]);
    expect(last().headers.authorization).toBe('token secret-token');
    expect(last().url).toBe('/base/pai/api/v1/me');
  });

  it('lists jobs with filters as query parameters', async () => {
    const page = await client().listJobs('team-a', { owner: 'alice', state: '', limit: 50 });
    expect(page.total).toBe(7);
    expect(page.jobs.map(j => j.id)).toEqual(['j1']);
    expect(last().url).toBe('/base/pai/api/v1/workspaces/team-a/jobs?owner=alice&limit=50');
  });

  it('unwraps wrapped lists', async () => {
    const profiles = await client().profiles();
    expect(profiles[0].slug).toBe('cpu-small');
  });

  it('raises the control plane error message and code', async () => {
    const error = await client()
      .getJob('team-a', 'missing')
      .catch(e => e);
    expect(error).toBeInstanceOf(PaiApiError);
    expect(error.status).toBe(404);
    expect(error.code).toBe('not_found');
    expect(error.message).toBe('job missing not found in team-a');
  });

  it('keeps the gate verdict of a refused promotion', async () => {
    const error = await client()
      .setAlias('team-a', 'iris', 'production', 3)
      .catch(e => e);
    expect(error.status).toBe(422);
    expect(error.code).toBe('gate_failed');
    expect(error.message).toContain('accuracy = 0.95');
    expect(JSON.parse(last().body.toString())).toEqual({ version: 3 });
    expect(last().method).toBe('PUT');
  });

  it('never shows an HTML error page as the message', async () => {
    const error = await client()
      .listDeployments('team-a')
      .catch(e => e);
    expect(error.status).toBe(502);
    expect(error.message).toBe('The PAI control plane answered with an error.');
  });

  it('reports an unreachable server as a network error', async () => {
    const closed = http.createServer();
    await new Promise<void>(resolve => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise(resolve => closed.close(resolve));
    const api = new PaiApi(ServerConnection.makeSettings({ baseUrl: `http://127.0.0.1:${port}/`, wsUrl: 'ws://x/' }));
    const error = await api.me().catch(e => e);
    expect(error).toBeInstanceOf(PaiApiError);
    expect(error.code).toBe('network_error');
    expect(error.status).toBe(0);
  });

  it('submits a notebook with its content and parameters', async () => {
    const job = await client().submitNotebook({
      path: 'train.ipynb',
      content: { cells: [], nbformat: 4 },
      workspace: 'team-a',
      parameters: { C: 0.5 }
    });
    expect(job.id).toBe('new-job');
    const sent = JSON.parse(last().body.toString());
    expect(sent.content).toEqual({ cells: [], nbformat: 4 });
    expect(last().headers['content-type']).toBe('application/json');
    const bad = await client()
      .submitNotebook({ path: '', workspace: 'team-a' })
      .catch(e => e);
    expect(bad.message).toBe('path: required');
  });

  it('cancels with a POST', async () => {
    const job = await client().cancelJob('team-a', 'j1');
    expect(job.state).toBe('cancelled');
    expect(last().method).toBe('POST');
  });

  it('follows a log stream, keeping multi-byte characters whole, and resumes from an offset', async () => {
    const chunks: string[] = [];
    const end = await client().followLogs('team-a', 'j1', { onText: t => chunks.push(t) });
    expect(chunks.join('')).toBe(LOG);
    expect(chunks.length).toBeGreaterThan(1);
    expect(end).toBe(Buffer.byteLength(LOG));
    expect(last().url).toBe('/base/pai/api/v1/workspaces/team-a/jobs/j1/logs?follow=1');
    const again: string[] = [];
    const from = Buffer.byteLength('epoch 1 loss=0.9\n');
    const end2 = await client().followLogs('team-a', 'j1', { offset: from, onText: t => again.push(t) });
    expect(again.join('')).toBe(LOG.slice('epoch 1 loss=0.9\n'.length));
    expect(end2).toBe(end);
    expect(last().url).toContain(`offset=${from}`);
  });

  it('stops following when aborted', async () => {
    const controller = new AbortController();
    controller.abort();
    await expect(
      client().followLogs('team-a', 'j1', { onText: () => undefined, signal: controller.signal })
    ).rejects.toThrow();
  });

  it('uploads with progress over XHR, lists, downloads and deletes with encoded paths', async () => {
    const api = client();
    const data = new Uint8Array(200_000).map((_, i) => i % 251);
    const progress: number[] = [];
    await api.upload('team-a', 'datasets/my data.bin', new Blob([data]), loaded => progress.push(loaded)).done;
    const put = seen.filter(s => s.method === 'PUT').pop()!;
    expect(put.url).toBe('/base/pai/api/v1/workspaces/team-a/files/datasets/my%20data.bin');
    expect(put.headers.authorization).toBe('token secret-token');
    expect(Buffer.compare(put.body, Buffer.from(data))).toBe(0);
    expect(progress[progress.length - 1]).toBe(200_000);

    const entries = await api.listFiles('team-a', 'datasets');
    expect(entries.map(e => e.path)).toContain('datasets/my data.bin');

    const blob = await api.readFile('team-a', 'datasets/my data.bin');
    expect(Buffer.compare(Buffer.from(await blob.arrayBuffer()), Buffer.from(data))).toBe(0);

    await api.deleteFile('team-a', 'datasets/my data.bin', true);
    expect(last().method).toBe('DELETE');
    expect(last().url).toBe('/base/pai/api/v1/workspaces/team-a/files/datasets/my%20data.bin?recursive=1');
    const gone = await api.readFile('team-a', 'datasets/my data.bin').catch(e => e);
    expect(gone.status).toBe(404);
  });

  it('refuses paths that walk out of the workspace before any request', async () => {
    const before = seen.length;
    await expect(client().listFiles('team-a', 'jobs/../../x')).rejects.toThrow('Invalid path segment');
    expect(seen.length).toBe(before);
  });
});

describe('error mapping helpers', () => {
  it('maps bodies and statuses', () => {
    expect(errorFromResponse(429, '{"error": {"code": "quota_exceeded", "message": "2 jobs max"}}').message).toBe(
      '2 jobs max'
    );
    expect(errorFromResponse(403, '{"message": "\'_xsrf\' argument missing from POST"}').message).toContain('_xsrf');
    expect(errorFromResponse(503, '').message).toBe('The PAI control plane is unavailable.');
    expect(errorFromResponse(418, 'short text').message).toBe('short text');
    expect(errorFromResponse(418, '').code).toBe('http_418');
    expect(xsrfToken('a=1; _xsrf=2%7Cabc; b=3')).toBe('2|abc');
    expect(xsrfToken('a=1')).toBeUndefined();
    expect(normalizeMe({ name: 'bob', workspaces: ['x', { workspace: 'y', role: 'admin' }, {}] }).workspaces).toEqual([
      { name: 'x' },
      { workspace: 'y', role: 'admin', name: 'y' }
    ]);
  });
});

describe('PaiModel', () => {
  it('loads identity, honours the default workspace setting and keeps a valid choice', async () => {
    const model = new PaiModel(client(), nullTranslator.load('pai_lab'));
    let changes = 0;
    model.changed.connect(() => changes++);
    model.settings = { defaultWorkspace: 'team b', refreshInterval: 5 };
    await model.refresh();
    expect(model.error).toBe('');
    expect(model.workspaces).toEqual(['team-a', 'team b']);
    expect(model.workspace).toBe('team b');
    expect(model.role).toBe('viewer');
    model.workspace = 'team-a';
    await model.refresh();
    expect(model.workspace).toBe('team-a');
    expect(changes).toBeGreaterThan(2);
    const profiles = await model.profiles();
    expect(profiles.map(p => p.slug)).toEqual(['cpu-small']);
  });

  it('keeps a navigation target until the section view takes it, once', () => {
    const model = new PaiModel(client(), nullTranslator.load('pai_lab'));
    const seen: string[] = [];
    model.navigate.connect((_, nav) => seen.push(`${nav.section}:${nav.target}`));
    model.show('artifacts', 'jobs/j1/outputs');
    expect(model.section).toBe('artifacts');
    expect(seen).toEqual(['artifacts:jobs/j1/outputs']);
    expect(model.takeTarget('artifacts')).toBe('jobs/j1/outputs');
    expect(model.takeTarget('artifacts')).toBeUndefined();
    expect(model.takeTarget('jobs')).toBeUndefined();
  });

  it('reports an unreachable service as an error, not an exception', async () => {
    const closed = http.createServer();
    await new Promise<void>(resolve => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise(resolve => closed.close(resolve));
    const api = new PaiApi(ServerConnection.makeSettings({ baseUrl: `http://127.0.0.1:${port}/`, wsUrl: 'ws://x/' }));
    const model = new PaiModel(api, nullTranslator.load('pai_lab'));
    await model.refresh();
    expect(model.error).toMatch(/Cannot reach the Jupyter server/);
    expect(model.me).toBeNull();
    expect(model.workspace).toBe('');
    expect(model.loading).toBe(false);
  });
});
