/**
 * URL building for the pai-lab server extension routes.
 *
 * Every request the extension makes goes to `<base_url>pai/api/...`; the server
 * extension forwards `/pai/api/v1/...` one-to-one to the control plane. Keeping URL
 * construction in one pure module lets the tests pin the encoding rules (workspace
 * names, job ids and artifact paths are user data and must never be able to change
 * the route they end up in).
 */

/** Query values; `undefined`, `null` and `''` are left out of the query string. */
export type QueryValue = string | number | boolean | undefined | null;

/** The route prefix of the server extension, relative to the server's base URL. */
export const API_PREFIX = 'pai/api';

/**
 * Encode one path segment (a workspace, job id, model name...).
 *
 * Rejects empty segments and `.`/`..` so that user data can never walk up the route.
 */
export function encodeSegment(segment: string | number): string {
  const text = String(segment);
  if (text === '' || text === '.' || text === '..') {
    throw new Error(`Invalid path segment: ${JSON.stringify(text)}`);
  }
  return encodeURIComponent(text);
}

/**
 * Encode a slash-separated artifact path, segment by segment.
 *
 * Leading, trailing and doubled slashes are dropped (`/a//b/` is `a/b`); `.` and
 * `..` segments are refused rather than silently resolved.
 */
export function encodePath(path: string): string {
  return splitPath(path).map(encodeSegment).join('/');
}

/** Split an artifact path into its non-empty segments. */
export function splitPath(path: string): string[] {
  return path.split('/').filter(part => part !== '');
}

/** Join artifact path parts with single slashes (no leading slash). */
export function joinPath(...parts: string[]): string {
  return ([] as string[]).concat(...parts.map(splitPath)).join('/');
}

/** Build `?a=1&b=x` from an object, skipping empty values; '' when nothing is left. */
export function queryString(query?: Record<string, QueryValue>): string {
  if (!query) {
    return '';
  }
  const parts: string[] = [];
  for (const [key, value] of Object.entries(query)) {
    if (value === undefined || value === null || value === '') {
      continue;
    }
    parts.push(`${encodeURIComponent(key)}=${encodeURIComponent(String(value))}`);
  }
  return parts.length ? `?${parts.join('&')}` : '';
}

/**
 * The full URL of a server-extension route.
 *
 * @param baseUrl the Jupyter server's base URL (`ServerConnection.ISettings.baseUrl`).
 * @param route an already encoded route below `pai/api/`, e.g. `v1/me`.
 */
export function apiUrl(
  baseUrl: string,
  route: string,
  query?: Record<string, QueryValue>
): string {
  const base = baseUrl.endsWith('/') ? baseUrl : `${baseUrl}/`;
  const cleanRoute = route.replace(/^\/+/, '');
  return `${base}${API_PREFIX}/${cleanRoute}${queryString(query)}`;
}

/** Route of a workspace-scoped control-plane resource: `v1/workspaces/<ws>/<rest>`. */
export function workspaceRoute(workspace: string, ...rest: string[]): string {
  const tail = rest.filter(part => part !== '').join('/');
  return `v1/workspaces/${encodeSegment(workspace)}${tail ? `/${tail}` : ''}`;
}

/** The `pai://` URI a notebook or job uses to read an artifact of the current workspace. */
export function paiUri(path: string): string {
  return `pai://${joinPath(path)}`;
}
