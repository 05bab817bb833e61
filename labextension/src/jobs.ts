/**
 * Job list state: merging polled pages, ordering, terminal states, durations and
 * metric series. Pure functions, so the polling widgets stay thin and jest can pin
 * the behaviour (e.g. a poll answer never makes a job the user just cancelled
 * flash back to `running`).
 */
import { IJob, IMetricPoint, INotebookJobRequest } from './types';

export const TERMINAL_STATES = new Set([
  'succeeded',
  'failed',
  'cancelled',
  'timed_out',
  'lost'
]);

export const ACTIVE_STATES = new Set(['queued', 'starting', 'running']);

/** Every state a job can be in, in lifecycle order (for filters and badges). */
export const JOB_STATES = [
  'queued',
  'starting',
  'running',
  'succeeded',
  'failed',
  'cancelled',
  'timed_out',
  'lost'
];

export function isTerminal(state: string): boolean {
  return TERMINAL_STATES.has(state);
}

/** Milliseconds since the epoch of an ISO string or epoch seconds; NaN when unknown. */
export function toMillis(value: string | number | null | undefined): number {
  if (value === null || value === undefined || value === '') {
    return NaN;
  }
  if (typeof value === 'number') {
    // Epoch seconds (the control plane) vs milliseconds (JS): seconds are < 1e11.
    return value < 1e11 ? value * 1000 : value;
  }
  const hasZone = /([zZ]|[+-]\d\d:?\d\d)$/.test(value);
  // Naive ISO timestamps from the control plane are UTC.
  return Date.parse(hasZone ? value : `${value}Z`);
}

/** Newest first by creation time, ties broken by id so the order is stable. */
export function compareJobs(a: IJob, b: IJob): number {
  const ta = toMillis(a.created_at);
  const tb = toMillis(b.created_at);
  const va = Number.isNaN(ta) ? -Infinity : ta;
  const vb = Number.isNaN(tb) ? -Infinity : tb;
  if (va !== vb) {
    return vb - va;
  }
  return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
}

/**
 * Merge a fresh page of jobs into the current list.
 *
 * The fresh copy of a job wins, except that a job already known to be terminal never
 * goes back to an active state (a stale poll answer racing a cancel). Jobs that are not
 * in the fresh page are kept (they may be on another page), unless `replace` is set
 * (the fresh page is the whole list, e.g. after changing a filter).
 */
export function mergeJobs(current: IJob[], fresh: IJob[], replace = false): IJob[] {
  const byId = new Map<string, IJob>();
  if (!replace) {
    for (const job of current) {
      byId.set(job.id, job);
    }
  }
  const known = new Map(current.map(job => [job.id, job] as [string, IJob]));
  for (const job of fresh) {
    const previous = known.get(job.id);
    if (
      previous &&
      isTerminal(previous.state) &&
      !isTerminal(job.state) &&
      (previous.attempt ?? 1) >= (job.attempt ?? 1)
    ) {
      byId.set(job.id, previous);
    } else {
      byId.set(job.id, job);
    }
  }
  return Array.from(byId.values()).sort(compareJobs);
}

/** Replace one job in a list (after an action answered with its new state). */
export function upsertJob(current: IJob[], job: IJob): IJob[] {
  return mergeJobs(current, [job]);
}

/** Keep only jobs matching an owner and/or state filter ('' = any). */
export function filterJobs(jobs: IJob[], owner: string, state: string): IJob[] {
  return jobs.filter(
    job => (!owner || job.owner === owner) && (!state || job.state === state)
  );
}

/** Seconds a job ran (or has been running, given `now`); null before it started. */
export function jobDurationSeconds(job: IJob, now: number = Date.now()): number | null {
  const start = toMillis(job.started_at);
  if (Number.isNaN(start)) {
    return null;
  }
  const end = toMillis(job.finished_at);
  const stop = Number.isNaN(end) ? (isTerminal(job.state) ? start : now) : end;
  return Math.max(0, Math.round((stop - start) / 1000));
}

/** `4s`, `2m 05s`, `1h 02m`, `3d 4h`; '—' for unknown. */
export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) {
    return '—';
  }
  const s = Math.round(seconds);
  if (s < 60) {
    return `${s}s`;
  }
  if (s < 3600) {
    return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
  }
  if (s < 86400) {
    return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
  }
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

/** What the job runs: notebook or script path, or the command. */
export function jobSource(job: IJob): string {
  const source = job.spec?.source ?? {};
  if (source.notebook) {
    return source.notebook;
  }
  if (source.script) {
    return source.script;
  }
  if (Array.isArray(source.command)) {
    return source.command.join(' ');
  }
  return '';
}

/** A display name: the job's name, else its source's file name, else its id. */
export function jobTitle(job: IJob): string {
  const source = jobSource(job);
  return job.name || job.spec?.name || source.split('/').pop() || job.id;
}

export interface IPoint {
  x: number;
  y: number;
}

/**
 * Group metric points into one series per metric name, ordered by step.
 *
 * Points without a step are numbered in the order they were logged, so a metric
 * logged once per epoch without `step=` still draws as a line.
 */
export function metricSeries(metrics: IMetricPoint[] | undefined): Map<string, IPoint[]> {
  const series = new Map<string, IPoint[]>();
  for (const point of metrics ?? []) {
    const value = Number(point.value);
    if (!point.name || !Number.isFinite(value)) {
      continue;
    }
    const list = series.get(point.name) ?? [];
    const step =
      point.step === null || point.step === undefined || !Number.isFinite(Number(point.step))
        ? list.length
        : Number(point.step);
    list.push({ x: step, y: value });
    series.set(point.name, list);
  }
  for (const list of series.values()) {
    list.sort((a, b) => a.x - b.x);
  }
  return series;
}

/** The last value logged for each metric (what the job list and models show). */
export function latestMetrics(metrics: IMetricPoint[] | undefined): Record<string, number> {
  const result: Record<string, number> = {};
  for (const [name, points] of metricSeries(metrics)) {
    result[name] = points[points.length - 1].y;
  }
  return result;
}

/**
 * SVG polyline points for a series scaled into a `width` x `height` box (y grows up).
 * A single point, or a flat series, draws as a horizontal line in the middle.
 */
export function chartPath(points: IPoint[], width: number, height: number, pad = 4): string {
  if (!points.length) {
    return '';
  }
  const xs = points.map(p => p.x);
  const ys = points.map(p => p.y);
  const minX = Math.min(...xs);
  const maxX = Math.max(...xs);
  const minY = Math.min(...ys);
  const maxY = Math.max(...ys);
  const w = width - 2 * pad;
  const h = height - 2 * pad;
  const sx = (x: number) => (maxX === minX ? pad + w / 2 : pad + ((x - minX) / (maxX - minX)) * w);
  const sy = (y: number) => (maxY === minY ? pad + h / 2 : pad + h - ((y - minY) / (maxY - minY)) * h);
  const coords = points.map(p => `${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`);
  if (points.length === 1) {
    return `${pad},${coords[0].split(',')[1]} ${(width - pad).toFixed(1)},${coords[0].split(',')[1]}`;
  }
  return coords.join(' ');
}

/**
 * The `notebook-jobs` request that re-runs a notebook job with the same spec, given the
 * notebook snapshot it ran (`jobs/<id>/input.ipynb` from the store): the re-run runs
 * exactly what the original ran, not whatever the file in Lab looks like now.
 */
export function rerunRequest(job: IJob, snapshot: unknown): INotebookJobRequest {
  const spec = job.spec ?? {};
  const request: INotebookJobRequest = {
    path: spec.source?.notebook ?? `${jobTitle(job)}.ipynb`,
    content: snapshot,
    workspace: job.workspace
  };
  if (spec.name) {
    request.name = spec.name;
  }
  if (spec.parameters) {
    request.parameters = spec.parameters;
  }
  if (spec.profile) {
    request.profile = spec.profile;
  }
  if (spec.workers) {
    request.workers = spec.workers;
  }
  if (spec.max_runtime !== undefined) {
    request.max_runtime = spec.max_runtime;
  }
  if (spec.outputs) {
    request.outputs = spec.outputs;
  }
  if (spec.retries !== undefined) {
    request.retries = spec.retries;
  }
  if (spec.env) {
    request.env = spec.env;
  }
  return request;
}
