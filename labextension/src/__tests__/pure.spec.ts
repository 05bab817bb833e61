/**
 * Pure logic: URL building, parameter-cell parsing, job list merging, formatting.
 */
import {
  apiUrl,
  encodePath,
  encodeSegment,
  joinPath,
  paiUri,
  queryString,
  workspaceRoute
} from '../urls';
import {
  findParametersCell,
  formatParameters,
  parseDuration,
  parseOutputs,
  parseParameterLines,
  parseParametersCell,
  parsePythonLiteral
} from '../params';
import {
  chartPath,
  compareJobs,
  filterJobs,
  formatDuration,
  isTerminal,
  jobDurationSeconds,
  jobTitle,
  latestMetrics,
  mergeJobs,
  metricSeries,
  rerunRequest,
  toMillis
} from '../jobs';
import {
  breadcrumbs,
  curlExample,
  fileKind,
  formatSize,
  formatTime,
  localCopyPath,
  parentPath,
  sortEntries,
  checkName,
  servedModel,
  endpointOf
} from '../format';
import { pickWorkspace, readSettings } from '../settings';
import { buildSubmitRequest, submitDefaults } from '../submitRequest';
import { IJob } from '../types';

function job(id: string, state: string, created: string, extra: Partial<IJob> = {}): IJob {
  return { id, state, created_at: created, workspace: 'team-a', owner: 'alice', spec: {}, ...extra };
}

describe('urls', () => {
  it('builds routes under pai/api with and without a trailing slash on the base URL', () => {
    expect(apiUrl('/user/alice/', 'v1/me')).toBe('/user/alice/pai/api/v1/me');
    expect(apiUrl('http://h:1/base', '/v1/me')).toBe('http://h:1/base/pai/api/v1/me');
  });

  it('encodes workspace names and refuses dot segments', () => {
    expect(workspaceRoute('team a/b', 'jobs')).toBe('v1/workspaces/team%20a%2Fb/jobs');
    expect(() => encodeSegment('..')).toThrow('Invalid path segment');
    expect(() => encodeSegment('')).toThrow();
    expect(encodeSegment('job?x=1#y')).toBe('job%3Fx%3D1%23y');
  });

  it('encodes artifact paths segment by segment, collapsing slashes', () => {
    expect(encodePath('/datasets//iris data.csv/')).toBe('datasets/iris%20data.csv');
    expect(encodePath('')).toBe('');
    expect(() => encodePath('jobs/../../etc/passwd')).toThrow('Invalid path segment');
    expect(encodePath('a/%2e%2e/b')).toBe('a/%252e%252e/b');
  });

  it('builds query strings without empty values', () => {
    expect(queryString({ owner: 'alice', state: '', limit: 50, x: undefined, y: null })).toBe(
      '?owner=alice&limit=50'
    );
    expect(queryString({ a: 'x&y=z' })).toBe('?a=x%26y%3Dz');
    expect(queryString({})).toBe('');
    expect(queryString(undefined)).toBe('');
  });

  it('joins paths and makes pai:// URIs', () => {
    expect(joinPath('jobs/', '/abc', 'outputs/')).toBe('jobs/abc/outputs');
    expect(paiUri('/datasets/iris.csv')).toBe('pai://datasets/iris.csv');
  });
});

describe('parameter cell parsing', () => {
  it('reads literals of every kind', () => {
    const source = [
      'C = 0.5  # regularisation',
      'epochs: int = 10',
      "name = 'iris' # a 'quoted' comment",
      'tags = ["a", "b#c"]',
      'opts = {"depth": 3, "use_gpu": False}',
      'nothing = None',
      'big = 1_000',
      'lr = 1e-3',
      'neg = -2',
      'pair = (1, 2)',
      'text = """multi',
      'line"""',
      'multi = [',
      '    1,',
      '    2,',
      ']',
      'import os',
      'if True:',
      '    hidden = 1',
      'x == 1'
    ].join('\n');
    const { values, skipped } = parseParametersCell(source);
    expect(values).toEqual({
      C: 0.5,
      epochs: 10,
      name: 'iris',
      tags: ['a', 'b#c'],
      opts: { depth: 3, use_gpu: false },
      nothing: null,
      big: 1000,
      lr: 0.001,
      neg: -2,
      pair: [1, 2],
      multi: [1, 2]
    });
    // The triple-quoted string spanning lines is not a one-line literal: reported, not guessed.
    expect(skipped).toEqual(['text']);
    expect(Object.keys(values)[0]).toBe('C');
  });

  it('reports expressions it cannot represent and lets a later literal win', () => {
    const { values, skipped } = parseParametersCell(
      'lr = 1 / 3\nsteps = len(data)\npath = f"{x}.csv"\nsteps = 5'
    );
    expect(values).toEqual({ steps: 5 });
    expect(skipped).toEqual(['lr', 'path']);
  });

  it('parses python string escapes and raw strings', () => {
    expect(parsePythonLiteral("'a\\nb\\'c'")).toBe("a\nb'c");
    expect(parsePythonLiteral("r'C:\\temp'")).toBe('C:\\temp');
    expect(parsePythonLiteral('"\\u00e9"')).toBe('é');
    expect(() => parsePythonLiteral('foo')).toThrow();
    expect(() => parsePythonLiteral('1 2')).toThrow();
    expect(() => parsePythonLiteral('[1, 2')).toThrow();
  });

  it('finds the parameters-tagged code cell (nbformat source as a list or string)', () => {
    const cells = [
      { cell_type: 'markdown', source: 'x = 1', metadata: { tags: ['parameters'] } },
      { cell_type: 'code', source: 'y = 1', metadata: {} },
      { cell_type: 'code', source: ['C = 1\n', 'D = 2'], metadata: { tags: ['x', 'parameters'] } }
    ];
    expect(findParametersCell(cells)).toBe('C = 1\nD = 2');
    expect(findParametersCell([])).toBeNull();
  });

  it('round-trips dialog text', () => {
    const text = formatParameters({ C: 0.5, name: 'iris', tags: ['a'] });
    expect(text).toBe('C=0.5\nname="iris"\ntags=["a"]');
    expect(parseParameterLines(text + '\n\n# comment\nraw = hello world')).toEqual({
      C: 0.5,
      name: 'iris',
      tags: ['a'],
      raw: 'hello world'
    });
  });

  it('names the bad line in dialog errors', () => {
    expect(() => parseParameterLines('C=1\nnot a pair')).toThrow('Line 2');
    expect(() => parseParameterLines('1x=3')).toThrow('"1x" is not a valid Python identifier');
    expect(() => parseParameterLines('class=3')).toThrow('class');
  });

  it('parses outputs and durations', () => {
    expect(parseOutputs('model.joblib, metrics.json\nplots/roc.png')).toEqual([
      'model.joblib',
      'metrics.json',
      'plots/roc.png'
    ]);
    expect(() => parseOutputs('../secret')).toThrow('relative');
    expect(() => parseOutputs('/etc/passwd')).toThrow('relative');
    expect(parseDuration('')).toBeNull();
    expect(parseDuration('90')).toBe(90);
    expect(parseDuration('30m')).toBe(1800);
    expect(parseDuration('1.5h')).toBe(5400);
    expect(parseDuration('2d')).toBe(172800);
    expect(() => parseDuration('soon')).toThrow('not a duration');
    expect(() => parseDuration('0')).toThrow('positive');
  });
});

describe('job list state', () => {
  it('sorts newest first with a stable tie-break, unknown times last', () => {
    const jobs = [
      job('a', 'running', '2026-01-01T10:00:00Z'),
      job('c', 'queued', ''),
      job('b', 'queued', '2026-01-01T11:00:00Z'),
      job('d', 'queued', '2026-01-01T10:00:00Z')
    ];
    expect([...jobs].sort(compareJobs).map(j => j.id)).toEqual(['b', 'd', 'a', 'c']);
  });

  it('treats naive timestamps as UTC and epoch seconds as seconds', () => {
    expect(toMillis('2026-01-01T00:00:00')).toBe(Date.UTC(2026, 0, 1));
    expect(toMillis('2026-01-01T01:00:00+01:00')).toBe(Date.UTC(2026, 0, 1));
    expect(toMillis(1767225600)).toBe(Date.UTC(2026, 0, 1));
    expect(toMillis(null)).toBeNaN();
  });

  it('merges fresh pages: fresh wins, terminal never regresses, replace drops missing', () => {
    const current = [
      job('a', 'cancelled', '2026-01-01T10:00:00Z'),
      job('b', 'running', '2026-01-01T09:00:00Z'),
      job('c', 'succeeded', '2026-01-01T08:00:00Z')
    ];
    const fresh = [
      job('a', 'running', '2026-01-01T10:00:00Z'),
      job('b', 'succeeded', '2026-01-01T09:00:00Z'),
      job('n', 'queued', '2026-01-01T12:00:00Z')
    ];
    const merged = mergeJobs(current, fresh);
    expect(merged.map(j => [j.id, j.state])).toEqual([
      ['n', 'queued'],
      ['a', 'cancelled'],
      ['b', 'succeeded'],
      ['c', 'succeeded']
    ]);
    const replaced = mergeJobs(current, fresh, true);
    expect(replaced.map(j => j.id)).toEqual(['n', 'a', 'b']);
    // A retry (higher attempt) may legitimately go back to queued.
    const retried = mergeJobs(
      [job('r', 'failed', '2026-01-01T10:00:00Z', { attempt: 1 })],
      [job('r', 'queued', '2026-01-01T10:00:00Z', { attempt: 2 })]
    );
    expect(retried[0].state).toBe('queued');
  });

  it('filters by owner and state', () => {
    const jobs = [
      job('a', 'running', '', { owner: 'alice' }),
      job('b', 'failed', '', { owner: 'bob' })
    ];
    expect(filterJobs(jobs, 'bob', '').map(j => j.id)).toEqual(['b']);
    expect(filterJobs(jobs, '', 'running').map(j => j.id)).toEqual(['a']);
    expect(filterJobs(jobs, '', '').length).toBe(2);
  });

  it('computes durations for running and finished jobs', () => {
    const start = '2026-01-01T10:00:00Z';
    const now = Date.UTC(2026, 0, 1, 10, 2, 5);
    expect(jobDurationSeconds(job('a', 'running', start, { started_at: start }), now)).toBe(125);
    expect(
      jobDurationSeconds(
        job('a', 'succeeded', start, { started_at: start, finished_at: '2026-01-01T10:00:07Z' }),
        now
      )
    ).toBe(7);
    expect(jobDurationSeconds(job('a', 'queued', start), now)).toBeNull();
    expect(formatDuration(4)).toBe('4s');
    expect(formatDuration(125)).toBe('2m 05s');
    expect(formatDuration(3720)).toBe('1h 02m');
    expect(formatDuration(97200)).toBe('1d 3h');
    expect(formatDuration(null)).toBe('—');
    expect(isTerminal('timed_out')).toBe(true);
    expect(isTerminal('starting')).toBe(false);
  });

  it('titles jobs by name, then source file, then id', () => {
    expect(jobTitle(job('x', 'queued', '', { name: 'iris' }))).toBe('iris');
    expect(jobTitle(job('x', 'queued', '', { spec: { source: { notebook: 'dir/train.ipynb' } } }))).toBe(
      'train.ipynb'
    );
    expect(jobTitle(job('x', 'queued', ''))).toBe('x');
  });

  it('groups metrics into series by step, numbering points without steps', () => {
    const metrics = [
      { name: 'loss', value: 0.5, step: 2 },
      { name: 'loss', value: 0.9, step: 1 },
      { name: 'acc', value: 0.8 },
      { name: 'acc', value: 0.9 },
      { name: 'bad', value: NaN },
      { name: 'loss', value: 0.3, step: 3 }
    ];
    const series = metricSeries(metrics);
    expect(series.get('loss')).toEqual([
      { x: 1, y: 0.9 },
      { x: 2, y: 0.5 },
      { x: 3, y: 0.3 }
    ]);
    expect(series.get('acc')).toEqual([
      { x: 0, y: 0.8 },
      { x: 1, y: 0.9 }
    ]);
    expect(series.has('bad')).toBe(false);
    expect(latestMetrics(metrics)).toEqual({ loss: 0.3, acc: 0.9 });
  });

  it('scales chart points into the box with y growing up', () => {
    const path = chartPath(
      [
        { x: 0, y: 0 },
        { x: 10, y: 1 }
      ],
      108,
      58,
      4
    );
    expect(path).toBe('4.0,54.0 104.0,4.0');
    expect(chartPath([{ x: 3, y: 7 }], 108, 58, 4)).toBe('4,29.0 104.0,29.0');
    expect(chartPath([], 10, 10)).toBe('');
  });

  it('re-runs a notebook job with the same spec and its snapshot', () => {
    const original = job('j1', 'failed', '', {
      spec: {
        name: 'iris',
        source: { notebook: 'train.ipynb' },
        parameters: { C: 1 },
        profile: 'cpu-small',
        workers: 2,
        max_runtime: 600,
        outputs: ['model.joblib'],
        retries: 1,
        env: { A: 'b' }
      }
    });
    expect(rerunRequest(original, { cells: [] })).toEqual({
      path: 'train.ipynb',
      content: { cells: [] },
      workspace: 'team-a',
      name: 'iris',
      parameters: { C: 1 },
      profile: 'cpu-small',
      workers: 2,
      max_runtime: 600,
      outputs: ['model.joblib'],
      retries: 1,
      env: { A: 'b' }
    });
  });
});

describe('formatting', () => {
  it('formats sizes', () => {
    expect(formatSize(0)).toBe('0 B');
    expect(formatSize(1023)).toBe('1023 B');
    expect(formatSize(1536)).toBe('1.5 KiB');
    expect(formatSize(12 * 1024 * 1024)).toBe('12 MiB');
    expect(formatSize(null)).toBe('');
  });

  it('formats relative times', () => {
    const now = Date.UTC(2026, 0, 1, 12, 0, 0);
    expect(formatTime('2026-01-01T11:59:50Z', now)).toBe('just now');
    expect(formatTime('2026-01-01T11:55:00Z', now)).toBe('5 min ago');
    expect(formatTime('2026-01-01T09:00:00Z', now)).toBe('3 h ago');
    expect(formatTime(undefined, now)).toBe('');
  });

  it('builds breadcrumbs and parents', () => {
    expect(breadcrumbs('jobs/abc/outputs', 'team-a')).toEqual([
      { label: 'team-a', path: '' },
      { label: 'jobs', path: 'jobs' },
      { label: 'abc', path: 'jobs/abc' },
      { label: 'outputs', path: 'jobs/abc/outputs' }
    ]);
    expect(parentPath('jobs/abc/')).toBe('jobs');
    expect(parentPath('x')).toBe('');
  });

  it('classifies files and local copies', () => {
    expect(fileKind('out.IPYNB')).toBe('notebook');
    expect(fileKind('iris.csv')).toBe('csv');
    expect(fileKind('roc.png')).toBe('image');
    expect(fileKind('logs.txt')).toBe('text');
    expect(fileKind('model.joblib')).toBe('other');
    expect(fileKind('README')).toBe('other');
    expect(localCopyPath('team-a', 'jobs/1/output.ipynb')).toBe('pai-artifacts/team-a/jobs/1/output.ipynb');
  });

  it('makes a V2 curl example without leaking the token by default', () => {
    const curl = curlExample('http://127.0.0.1:9000/', 'iris', null, 2);
    expect(curl).toContain("curl -X POST 'http://127.0.0.1:9000/v2/models/iris/infer'");
    expect(curl).toContain('Bearer $TOKEN');
    expect(curl).toContain('"shape":[1,2]');
    expect(JSON.parse(curl.split("-d '")[1].slice(0, -1)).inputs[0].data).toEqual([0, 0]);
  });

  it('sorts folders first and checks names', () => {
    const entries = sortEntries([
      { name: 'b.csv', path: 'b.csv', type: 'file' },
      { name: 'z', path: 'z', type: 'directory' },
      { name: 'a.csv', path: 'a.csv', type: 'file' }
    ]);
    expect(entries.map(e => e.name)).toEqual(['z', 'a.csv', 'b.csv']);
    expect(checkName(' iris-v2 ', 'Model')).toBe('iris-v2');
    expect(() => checkName('Iris!', 'Model')).toThrow('Model "Iris!"');
    expect(servedModel({ name: 'svc', model: 'iris@production' })).toBe('iris');
    expect(servedModel({ name: 'svc', variants: [{ model: 'm2:3' }] })).toBe('m2');
    expect(endpointOf({ name: 'svc', endpoint: 'http://x' })).toBe('http://x');
  });
});

describe('settings and workspace choice', () => {
  it('clamps settings', () => {
    expect(readSettings({ defaultWorkspace: ' team-b ', refreshInterval: 0.2 })).toEqual({
      defaultWorkspace: 'team-b',
      refreshInterval: 1
    });
    expect(readSettings({ refreshInterval: 'x' }).refreshInterval).toBe(5);
  });

  it('keeps the current workspace, else the default, else the first', () => {
    expect(pickWorkspace(['a', 'b'], 'b', 'a')).toBe('b');
    expect(pickWorkspace(['a', 'b'], 'gone', 'b')).toBe('b');
    expect(pickWorkspace(['a', 'b'], '', 'nope')).toBe('a');
    expect(pickWorkspace([], 'a', 'b')).toBe('');
  });
});

describe('submit request', () => {
  const notebook = {
    cells: [
      { cell_type: 'code', source: 'C = 0.5\nsolver = "lbfgs"\nn = compute()', metadata: { tags: ['parameters'] } }
    ]
  };

  it('pre-fills from the parameters cell', () => {
    expect(submitDefaults('work/train.ipynb', notebook)).toEqual({
      name: 'train',
      parameters: 'C=0.5\nsolver="lbfgs"',
      skipped: ['n']
    });
  });

  it('builds the notebook-jobs request with the unsaved content', () => {
    const request = buildSubmitRequest(
      {
        name: ' iris ',
        profile: 'gpu',
        parameters: 'C=0.1',
        workers: '2',
        max_runtime: '30m',
        outputs: 'model.joblib',
        files: 'data.csv',
        retries: '1'
      },
      { path: 'work/train.ipynb', content: notebook, workspace: 'team-a' }
    );
    expect(request).toEqual({
      path: 'work/train.ipynb',
      content: notebook,
      workspace: 'team-a',
      name: 'iris',
      profile: 'gpu',
      parameters: { C: 0.1 },
      workers: 2,
      retries: 1,
      max_runtime: 1800,
      outputs: ['model.joblib'],
      files: ['data.csv']
    });
  });

  it('refuses bad fields with a message naming them', () => {
    const ctx = { path: 'train.ipynb', content: {}, workspace: 'team-a' };
    expect(() => buildSubmitRequest({ workers: '0' }, ctx)).toThrow('Workers');
    expect(() => buildSubmitRequest({ workers: '1.5' }, ctx)).toThrow('Workers');
    expect(() => buildSubmitRequest({ retries: '-1' }, ctx)).toThrow('Retries');
    expect(() => buildSubmitRequest({ max_runtime: 'forever' }, ctx)).toThrow('Max runtime');
    expect(() => buildSubmitRequest({ parameters: 'oops' }, ctx)).toThrow('NAME=VALUE');
    expect(() => buildSubmitRequest({}, { ...ctx, workspace: '' })).toThrow('workspace');
    expect(buildSubmitRequest({}, ctx)).toMatchObject({ workers: 1, retries: 0, max_runtime: null, outputs: [] });
  });
});
