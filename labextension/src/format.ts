/**
 * Formatting for the panels: sizes, times, breadcrumbs, file kinds, curl examples.
 */
import { toMillis } from './jobs';
import { IDeployment, IFileEntry } from './types';
import { joinPath, splitPath } from './urls';

/** `512 B`, `1.5 KiB`, `12 MiB`; '' for folders / unknown. */
export function formatSize(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined || !Number.isFinite(bytes)) {
    return '';
  }
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  const digits = unit === 0 || value >= 10 ? 0 : 1;
  return `${value.toFixed(digits)} ${units[unit]}`;
}

/** A short relative time (`just now`, `5 min ago`, `3 h ago`, else the date). */
export function formatTime(
  value: string | number | null | undefined,
  now: number = Date.now()
): string {
  const ms = toMillis(value);
  if (Number.isNaN(ms)) {
    return '';
  }
  const diff = Math.round((now - ms) / 1000);
  if (diff < 0) {
    return new Date(ms).toLocaleString();
  }
  if (diff < 45) {
    return 'just now';
  }
  if (diff < 3600) {
    return `${Math.max(1, Math.round(diff / 60))} min ago`;
  }
  if (diff < 86400) {
    return `${Math.round(diff / 3600)} h ago`;
  }
  return new Date(ms).toLocaleDateString();
}

/** The full local date-time, for tooltips. */
export function formatTimestamp(value: string | number | null | undefined): string {
  const ms = toMillis(value);
  return Number.isNaN(ms) ? '' : new Date(ms).toLocaleString();
}

export interface ICrumb {
  label: string;
  path: string;
}

/** Breadcrumbs for an artifact path, starting with the workspace root. */
export function breadcrumbs(path: string, rootLabel: string): ICrumb[] {
  const parts = splitPath(path);
  const crumbs: ICrumb[] = [{ label: rootLabel, path: '' }];
  parts.forEach((part, index) => {
    crumbs.push({ label: part, path: parts.slice(0, index + 1).join('/') });
  });
  return crumbs;
}

/** The parent folder of an artifact path ('' for top-level entries). */
export function parentPath(path: string): string {
  const parts = splitPath(path);
  parts.pop();
  return joinPath(...parts);
}

export type FileKind = 'notebook' | 'csv' | 'image' | 'text' | 'other';

/** How Lab can show a file, from its extension. */
export function fileKind(name: string): FileKind {
  const ext = name.toLowerCase().split('.').pop() ?? '';
  if (!name.includes('.')) {
    return 'other';
  }
  if (ext === 'ipynb') {
    return 'notebook';
  }
  if (ext === 'csv' || ext === 'tsv') {
    return 'csv';
  }
  if (['png', 'jpg', 'jpeg', 'gif', 'svg', 'webp', 'bmp'].includes(ext)) {
    return 'image';
  }
  if (
    ['txt', 'log', 'json', 'jsonl', 'md', 'py', 'yaml', 'yml', 'toml', 'cfg', 'ini'].includes(ext)
  ) {
    return 'text';
  }
  return 'other';
}

/** Where an artifact is put in the user's Lab folder when opened: `pai-artifacts/<ws>/<path>`. */
export function localCopyPath(workspace: string, path: string): string {
  return joinPath('pai-artifacts', workspace, path);
}

/** The endpoint URL of a deployment, and the V2 inference URL of its model. */
export function inferUrl(endpoint: string, model: string): string {
  const base = endpoint.replace(/\/+$/, '');
  return `${base}/v2/models/${encodeURIComponent(model)}/infer`;
}

/**
 * A copyable curl example for a V2 (Open Inference Protocol) endpoint. The token is
 * referenced as `$TOKEN` unless given, so screenshots do not leak it.
 */
export function curlExample(
  endpoint: string,
  model: string,
  token?: string | null,
  features = 4
): string {
  const data = JSON.stringify({
    inputs: [
      {
        name: 'input-0',
        shape: [1, features],
        datatype: 'FP32',
        data: Array.from({ length: features }, () => 0)
      }
    ]
  });
  return [
    `curl -X POST '${inferUrl(endpoint, model)}' \\`,
    `  -H 'Authorization: Bearer ${token ? token : '$TOKEN'}' \\`,
    "  -H 'Content-Type: application/json' \\",
    `  -d '${data}'`
  ].join('\n');
}

/** Folders first, then by name. */
export function sortEntries(entries: IFileEntry[]): IFileEntry[] {
  return [...entries].sort((a, b) => {
    if (a.type !== b.type) {
      return a.type === 'directory' ? -1 : 1;
    }
    return a.name.localeCompare(b.name);
  });
}

const NAME = /^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$/;

/** Check a model, alias or deployment name the way the control plane does (DNS-ish). */
export function checkName(name: string, what: string): string {
  const trimmed = name.trim();
  if (!NAME.test(trimmed)) {
    throw new Error(
      `${what} "${trimmed}" must be lowercase letters, digits, '.', '_' or '-', start and end with a letter or digit.`
    );
  }
  return trimmed;
}

/** The model name a deployment serves (for the V2 URL): `iris@production` -> `iris`. */
export function servedModel(dep: IDeployment): string {
  const spec = dep.model ?? dep.variants?.[0]?.model ?? dep.name;
  return String(spec).split(/[@:]/)[0];
}

/** A deployment's endpoint URL ('' until it has one). */
export function endpointOf(dep: IDeployment): string {
  return String(dep.url ?? dep.endpoint ?? '');
}
