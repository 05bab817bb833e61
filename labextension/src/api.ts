/**
 * The one client of the pai-lab server extension (`<base_url>pai/api/`).
 *
 * Widgets never build URLs or parse error bodies themselves: they call this client and
 * get typed results or a `PaiApiError` whose message is fit to show in the panel.
 * Requests go through `ServerConnection.makeRequest`, which adds the token and XSRF
 * headers the Jupyter server wants.
 */
import { ServerConnection } from '@jupyterlab/services';

import {
  apiUrl,
  encodePath,
  encodeSegment,
  QueryValue,
  workspaceRoute
} from './urls';
import {
  IDeployment,
  IFileEntry,
  IJob,
  IJobList,
  IJobSpec,
  IMe,
  IModel,
  IModelVersion,
  INotebookJobRequest,
  IProfile
} from './types';

/** An error answered by the server extension or the control plane, or a network failure. */
export class PaiApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    /** The whole `error` object of the answer (e.g. a refused gate's verdict). */
    readonly detail: Record<string, any> = {}
  ) {
    super(message);
    this.name = 'PaiApiError';
  }
}

const STATUS_MESSAGES: Record<number, string> = {
  0: 'Cannot reach the Jupyter server.',
  400: 'The request was refused as invalid.',
  401: 'You are not signed in to the PAI control plane.',
  403: 'You do not have permission to do this in this workspace.',
  404: 'Not found.',
  409: 'This conflicts with the current state.',
  413: 'The upload is too large.',
  422: 'The evaluation gate refused this.',
  429: 'The workspace quota is exhausted.',
  502: 'The PAI control plane answered with an error.',
  503: 'The PAI control plane is unavailable.',
  504: 'The PAI control plane did not answer in time.'
};

const STATUS_CODES: Record<number, string> = {
  0: 'network_error',
  400: 'bad_request',
  401: 'unauthorized',
  403: 'forbidden',
  404: 'not_found',
  409: 'conflict',
  413: 'payload_too_large',
  422: 'gate_failed',
  429: 'quota_exceeded',
  503: 'backend_unavailable'
};

/**
 * Turn an HTTP status and response body into a `PaiApiError`.
 *
 * The body is the documented `{"error": {"code", "message"}}` when the control plane
 * answered; anything else (an HTML error page from a proxy, an empty body) falls back
 * to a message for the status so the user never sees raw markup or a blank error.
 */
export function errorFromResponse(status: number, body: string): PaiApiError {
  let detail: Record<string, any> = {};
  let code = STATUS_CODES[status] ?? `http_${status}`;
  let message = STATUS_MESSAGES[status] ?? `Request failed (HTTP ${status}).`;
  try {
    const parsed = JSON.parse(body);
    const err = parsed?.error;
    if (err && typeof err === 'object') {
      detail = err;
      if (typeof err.code === 'string' && err.code) {
        code = err.code;
      }
      if (typeof err.message === 'string' && err.message) {
        message = err.message;
      }
    } else if (typeof err === 'string' && err) {
      message = err;
    } else if (typeof parsed?.message === 'string' && parsed.message) {
      // jupyter_server's own JSON errors (e.g. a 403 for a missing XSRF token).
      message = parsed.message;
    }
  } catch {
    const text = body.trim();
    if (text && text.length < 300 && !text.startsWith('<')) {
      message = text;
    }
  }
  return new PaiApiError(status, code, message, detail);
}

/** Any thrown value as a user-facing message. */
export function errorMessage(error: unknown): string {
  if (error instanceof PaiApiError) {
    return error.message;
  }
  if (error instanceof Error) {
    return error.message || String(error);
  }
  return String(error);
}

export interface IJobFilter {
  owner?: string;
  state?: string;
  limit?: number;
  offset?: number;
}

export interface IFollowOptions {
  /** Byte offset to resume from. */
  offset?: number;
  /** Called with each decoded chunk of text as it arrives. */
  onText: (text: string) => void;
  /** Abort to stop following. */
  signal?: AbortSignal;
}

export interface IUploadHandle {
  /** Resolves when the upload finished, rejects with a `PaiApiError`. */
  done: Promise<void>;
  abort: () => void;
}

/** Read the `_xsrf` cookie the Jupyter server sets, if any. */
export function xsrfToken(cookie: string): string | undefined {
  const match = cookie.match('\\b_xsrf=([^;]*)\\b');
  return match ? decodeURIComponent(match[1]) : undefined;
}

export class PaiApi {
  constructor(settings?: ServerConnection.ISettings) {
    this.settings = settings ?? ServerConnection.makeSettings();
  }

  readonly settings: ServerConnection.ISettings;

  /** The URL of a route below `pai/api/`. */
  url(route: string, query?: Record<string, QueryValue>): string {
    return apiUrl(this.settings.baseUrl, route, query);
  }

  /** Send a request; resolve with the response when it is 2xx, else throw `PaiApiError`. */
  async fetch(
    route: string,
    init: RequestInit = {},
    query?: Record<string, QueryValue>
  ): Promise<Response> {
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(
        this.url(route, query),
        init,
        this.settings
      );
    } catch (error) {
      if ((error as Error)?.name === 'AbortError') {
        throw error;
      }
      throw new PaiApiError(
        0,
        'network_error',
        `${STATUS_MESSAGES[0]} ${errorMessage(error)}`.trim()
      );
    }
    if (!response.ok) {
      const body = await response.text().catch(() => '');
      throw errorFromResponse(response.status, body);
    }
    return response;
  }

  /** Send a request and parse the JSON answer (`undefined` for 204). */
  async json<T>(
    route: string,
    init: RequestInit = {},
    query?: Record<string, QueryValue>
  ): Promise<T> {
    const response = await this.fetch(route, init, query);
    if (response.status === 204) {
      return undefined as T;
    }
    const text = await response.text();
    if (!text) {
      return undefined as T;
    }
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new PaiApiError(
        response.status,
        'invalid_response',
        'The server answered with something that is not JSON.'
      );
    }
  }

  private send<T>(route: string, method: string, body?: unknown): Promise<T> {
    const init: RequestInit = { method };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers = { 'Content-Type': 'application/json' };
    }
    return this.json<T>(route, init);
  }

  // --- identity and profiles -------------------------------------------------------

  me(): Promise<IMe> {
    return this.json<IMe>('v1/me').then(normalizeMe);
  }

  async profiles(): Promise<IProfile[]> {
    const body = await this.json<unknown>('v1/profiles');
    return listOf<IProfile>(body, 'profiles');
  }

  // --- jobs --------------------------------------------------------------------------

  async listJobs(workspace: string, filter: IJobFilter = {}): Promise<IJobList> {
    const body = await this.json<unknown>(
      workspaceRoute(workspace, 'jobs'),
      {},
      { ...filter }
    );
    const jobs = listOf<IJob>(body, 'jobs');
    const total =
      body && typeof (body as IJobList).total === 'number'
        ? (body as IJobList).total
        : jobs.length;
    return { jobs, total };
  }

  getJob(workspace: string, id: string): Promise<IJob> {
    return this.json<IJob>(workspaceRoute(workspace, 'jobs', encodeSegment(id)));
  }

  submitJob(workspace: string, spec: IJobSpec): Promise<IJob> {
    return this.send<IJob>(workspaceRoute(workspace, 'jobs'), 'POST', spec);
  }

  /** Submit a notebook (with its unsaved content) through the server extension. */
  submitNotebook(request: INotebookJobRequest): Promise<IJob> {
    return this.send<IJob>('notebook-jobs', 'POST', request);
  }

  cancelJob(workspace: string, id: string): Promise<IJob> {
    return this.send<IJob>(
      workspaceRoute(workspace, 'jobs', encodeSegment(id), 'cancel'),
      'POST',
      {}
    );
  }

  /**
   * Read a job's log from `offset`, following it until the server closes the stream.
   *
   * Resolves with the byte offset reached, so the caller can reconnect from there
   * (the stream closes when the job ends, or when a proxy drops a long request).
   */
  async followLogs(
    workspace: string,
    id: string,
    options: IFollowOptions
  ): Promise<number> {
    let offset = options.offset ?? 0;
    const response = await this.fetch(
      workspaceRoute(workspace, 'jobs', encodeSegment(id), 'logs'),
      { signal: options.signal },
      { follow: 1, offset: offset || undefined }
    );
    const decoder = new TextDecoder();
    const body = response.body;
    if (!body) {
      const text = await response.text();
      offset += new TextEncoder().encode(text).length;
      if (text) {
        options.onText(text);
      }
      return offset;
    }
    const reader = body.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) {
          break;
        }
        offset += value.byteLength;
        const text = decoder.decode(value, { stream: true });
        if (text) {
          options.onText(text);
        }
      }
      const rest = decoder.decode();
      if (rest) {
        options.onText(rest);
      }
    } finally {
      reader.releaseLock();
    }
    return offset;
  }

  // --- artifacts ---------------------------------------------------------------------

  private fileRoute(workspace: string, path: string): string {
    const encoded = encodePath(path);
    return workspaceRoute(workspace, 'files') + (encoded ? `/${encoded}` : '/');
  }

  /** List a folder of the workspace's artifact store ('' is the root). */
  async listFiles(workspace: string, path: string): Promise<IFileEntry[]> {
    const body = await this.json<unknown>(this.fileRoute(workspace, path));
    return listOf<IFileEntry>(body, 'entries');
  }

  /** The URL that downloads an artifact. */
  fileUrl(workspace: string, path: string): string {
    return this.url(this.fileRoute(workspace, path));
  }

  async readFile(workspace: string, path: string): Promise<Blob> {
    const response = await this.fetch(this.fileRoute(workspace, path));
    return response.blob();
  }

  async readText(workspace: string, path: string): Promise<string> {
    const response = await this.fetch(this.fileRoute(workspace, path));
    return response.text();
  }

  deleteFile(workspace: string, path: string, recursive = false): Promise<void> {
    return this.json<void>(
      this.fileRoute(workspace, path),
      { method: 'DELETE' },
      { recursive: recursive ? 1 : undefined }
    );
  }

  /**
   * Upload a file with progress reports (fetch cannot report upload progress, XHR can).
   */
  upload(
    workspace: string,
    path: string,
    data: Blob,
    onProgress?: (loaded: number, total: number) => void
  ): IUploadHandle {
    const xhr = new XMLHttpRequest();
    const done = new Promise<void>((resolve, reject) => {
      xhr.open('PUT', this.fileUrl(workspace, path));
      if (this.settings.token) {
        xhr.setRequestHeader('Authorization', `token ${this.settings.token}`);
      }
      const xsrf =
        typeof document !== 'undefined' ? xsrfToken(document.cookie) : undefined;
      if (xsrf) {
        xhr.setRequestHeader('X-XSRFToken', xsrf);
      }
      xhr.setRequestHeader('Content-Type', 'application/octet-stream');
      xhr.upload.onprogress = event => {
        if (onProgress) {
          onProgress(event.loaded, event.lengthComputable ? event.total : data.size);
        }
      };
      xhr.onload = () => {
        if (xhr.status >= 200 && xhr.status < 300) {
          onProgress?.(data.size, data.size);
          resolve();
        } else {
          reject(errorFromResponse(xhr.status, xhr.responseText ?? ''));
        }
      };
      xhr.onerror = () =>
        reject(new PaiApiError(0, 'network_error', STATUS_MESSAGES[0]));
      xhr.onabort = () =>
        reject(new PaiApiError(0, 'aborted', 'The upload was cancelled.'));
      xhr.send(data);
    });
    return { done, abort: () => xhr.abort() };
  }

  // --- models ------------------------------------------------------------------------

  async listModels(workspace: string): Promise<IModel[]> {
    return listOf<IModel>(
      await this.json<unknown>(workspaceRoute(workspace, 'models')),
      'models'
    );
  }

  getModel(workspace: string, name: string): Promise<IModel> {
    return this.json<IModel>(workspaceRoute(workspace, 'models', encodeSegment(name)));
  }

  async listVersions(workspace: string, name: string): Promise<IModelVersion[]> {
    return listOf<IModelVersion>(
      await this.json<unknown>(
        workspaceRoute(workspace, 'models', encodeSegment(name), 'versions')
      ),
      'versions'
    );
  }

  /** Register a new version from a job's output (`path` relative to the job folder). */
  registerVersion(
    workspace: string,
    name: string,
    body: { from_job?: string; path: string; framework?: string; description?: string }
  ): Promise<IModelVersion> {
    return this.send<IModelVersion>(
      workspaceRoute(workspace, 'models', encodeSegment(name), 'versions'),
      'POST',
      body
    );
  }

  /** Move an alias to a version; a 422 `PaiApiError` carries the gate's verdict. */
  setAlias(
    workspace: string,
    name: string,
    alias: string,
    version: number | string
  ): Promise<IModel> {
    return this.send<IModel>(
      workspaceRoute(
        workspace,
        'models',
        encodeSegment(name),
        'aliases',
        encodeSegment(alias)
      ),
      'PUT',
      { version }
    );
  }

  // --- deployments -------------------------------------------------------------------

  async listDeployments(workspace: string): Promise<IDeployment[]> {
    return listOf<IDeployment>(
      await this.json<unknown>(workspaceRoute(workspace, 'deployments')),
      'deployments'
    );
  }

  getDeployment(workspace: string, name: string): Promise<IDeployment> {
    return this.json<IDeployment>(
      workspaceRoute(workspace, 'deployments', encodeSegment(name))
    );
  }

  createDeployment(
    workspace: string,
    body: { name: string; model: string; replicas?: number }
  ): Promise<IDeployment> {
    return this.send<IDeployment>(workspaceRoute(workspace, 'deployments'), 'POST', body);
  }

  updateDeployment(
    workspace: string,
    name: string,
    patch: Record<string, unknown>
  ): Promise<IDeployment> {
    return this.send<IDeployment>(
      workspaceRoute(workspace, 'deployments', encodeSegment(name)),
      'PATCH',
      patch
    );
  }
}

/**
 * A list answer either bare (`[...]`) or wrapped (`{"<key>": [...]}`), as an array.
 */
export function listOf<T>(body: unknown, key: string): T[] {
  if (Array.isArray(body)) {
    return body as T[];
  }
  if (body && typeof body === 'object') {
    const value = (body as Record<string, unknown>)[key];
    if (Array.isArray(value)) {
      return value as T[];
    }
  }
  return [];
}

/**
 * `/me` with its workspaces as `[{name, role}]`, whether the control plane answered a
 * list of names, a list of objects, or a `{name: role}` map.
 */
export function normalizeMe(body: any): IMe {
  const raw = body?.workspaces;
  let workspaces: IMe['workspaces'] = [];
  if (Array.isArray(raw)) {
    workspaces = raw
      .map((item: any) =>
        typeof item === 'string'
          ? { name: item }
          : { ...item, name: item?.name ?? item?.workspace }
      )
      .filter((item: any) => typeof item.name === 'string' && item.name);
  } else if (raw && typeof raw === 'object') {
    workspaces = Object.entries(raw).map(([name, role]) => ({
      name,
      role: typeof role === 'string' ? role : (role as any)?.role
    }));
  }
  return { ...(body ?? {}), name: body?.name ?? '', workspaces };
}
