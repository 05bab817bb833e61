/**
 * The Jobs section: the workspace's jobs with live state badges, and a job's detail
 * (live logs, metrics chart, parameters, environment) with its actions.
 */
import * as React from 'react';

import { Notification } from '@jupyterlab/apputils';
import {
  caretLeftIcon,
  folderIcon,
  notebookIcon,
  refreshIcon,
  runIcon,
  stopIcon
} from '@jupyterlab/ui-components';

import { confirm, IPaiContext, openArtifact } from './actions';
import { errorMessage, PaiApiError } from './api';
import {
  Empty,
  ErrorBox,
  IconButton,
  KeyValues,
  Loading,
  MetricChart,
  StateBadge,
  TextButton,
  usePolling,
  useSignal
} from './components';
import { formatTime, formatTimestamp } from './format';
import {
  formatDuration,
  isTerminal,
  jobDurationSeconds,
  jobSource,
  jobTitle,
  JOB_STATES,
  mergeJobs,
  metricSeries,
  rerunRequest
} from './jobs';
import { registerModelDialog } from './modelsView';
import { IJob } from './types';

const PAGE = 50;

export function JobsView(props: { ctx: IPaiContext }) {
  const { model } = props.ctx;
  const { api, trans } = model;
  const workspace = model.workspace;
  const [jobs, setJobs] = React.useState<IJob[]>([]);
  const [total, setTotal] = React.useState(0);
  const [error, setError] = React.useState('');
  const [loaded, setLoaded] = React.useState(false);
  const [mine, setMine] = React.useState(true);
  const [state, setState] = React.useState('');
  const [selected, setSelected] = React.useState<string | null>(
    () => model.takeTarget('jobs') ?? null
  );
  const [now, setNow] = React.useState(Date.now());
  const generation = React.useRef(0);
  const owner = mine ? model.me?.name ?? '' : '';

  const load = React.useCallback(
    async (replace: boolean) => {
      if (!workspace) {
        return;
      }
      const mark = generation.current;
      try {
        const page = await api.listJobs(workspace, {
          owner: owner || undefined,
          state: state || undefined,
          limit: PAGE
        });
        if (mark !== generation.current) {
          return; // the filter or workspace changed while this was in flight
        }
        setJobs(current => mergeJobs(current, page.jobs, replace));
        setTotal(page.total);
        setError('');
      } catch (err) {
        if (mark === generation.current) {
          setError(errorMessage(err));
        }
      } finally {
        if (mark === generation.current) {
          setLoaded(true);
          setNow(Date.now());
        }
      }
    },
    [api, workspace, owner, state]
  );

  React.useEffect(() => {
    // A new filter: forget the old list (in-flight answers for it are dropped too).
    generation.current++;
    setJobs([]);
    setLoaded(false);
  }, [owner, state]);

  usePolling(() => void load(true), model.settings.refreshInterval, !!workspace && !selected, [
    load
  ]);
  useSignal(model.jobsTouched, () => void load(true));
  useSignal(model.navigate, ({ section }) => {
    const target = section === 'jobs' ? model.takeTarget('jobs') : undefined;
    if (target) {
      setSelected(target);
    }
  });

  if (!workspace) {
    return <Empty>{trans.__('Select a workspace to see its jobs.')}</Empty>;
  }
  if (selected) {
    return (
      <JobDetail ctx={props.ctx} workspace={workspace} id={selected} onBack={() => setSelected(null)} />
    );
  }
  return (
    <div className="pai-Section pai-Jobs">
      <div className="pai-Toolbar" role="toolbar" aria-label={trans.__('Job filters')}>
        <div className="pai-Segmented" role="radiogroup" aria-label={trans.__('Whose jobs')}>
          <button
            role="radio"
            aria-checked={mine}
            className={mine ? 'pai-mod-active' : ''}
            onClick={() => setMine(true)}
          >
            {trans.__('Mine')}
          </button>
          <button
            role="radio"
            aria-checked={!mine}
            className={!mine ? 'pai-mod-active' : ''}
            onClick={() => setMine(false)}
          >
            {trans.__('Workspace')}
          </button>
        </div>
        <select
          className="pai-Select"
          aria-label={trans.__('State')}
          value={state}
          onChange={event => setState(event.target.value)}
        >
          <option value="">{trans.__('All states')}</option>
          {JOB_STATES.map(s => (
            <option key={s} value={s}>
              {s.replace('_', ' ')}
            </option>
          ))}
        </select>
        <span className="pai-Spacer" />
        <IconButton icon={refreshIcon} label={trans.__('Refresh jobs')} onClick={() => void load(true)} />
      </div>
      <ErrorBox message={error} onRetry={() => void load(true)} retryLabel={trans.__('Retry')} />
      {!loaded && !error && <Loading label={trans.__('Loading jobs…')} />}
      {loaded && !error && jobs.length === 0 && (
        <Empty>
          <p>{trans.__('No jobs yet.')}</p>
          <p>
            {trans.__(
              'Open a notebook and press "Submit as job" in its toolbar, or run the "Submit Notebook as PAI Job" command.'
            )}
          </p>
        </Empty>
      )}
      {jobs.length > 0 && (
        <ul className="pai-List pai-JobList" aria-label={trans.__('Jobs')}>
          {jobs.map(job => (
            <li
              key={job.id}
              className="pai-ListItem pai-JobItem"
              data-job-id={job.id}
              data-state={job.state}
              tabIndex={0}
              role="button"
              aria-label={trans.__('Job %1, %2', jobTitle(job), job.state)}
              onClick={() => setSelected(job.id)}
              onKeyDown={event => {
                if (event.key === 'Enter' || event.key === ' ') {
                  event.preventDefault();
                  setSelected(job.id);
                }
              }}
            >
              <div className="pai-JobItem-main">
                <span className="pai-JobItem-title">{jobTitle(job)}</span>
                <StateBadge state={job.state} trans={trans} />
              </div>
              <div className="pai-JobItem-meta">
                <span title={job.id}>{job.id.slice(0, 12)}</span>
                {!mine && <span>{job.owner}</span>}
                <span>{job.spec?.profile ?? ''}</span>
                <span title={formatTimestamp(job.created_at)}>{formatTime(job.created_at, now)}</span>
                <span>{formatDuration(jobDurationSeconds(job, now))}</span>
              </div>
            </li>
          ))}
        </ul>
      )}
      {total > jobs.length && (
        <div className="pai-Note">{trans.__('Showing the newest %1 of %2 jobs.', jobs.length, total)}</div>
      )}
    </div>
  );
}

/** Follow a job's log while mounted: reconnects from the last offset until the job ends. */
function useLogFollow(
  ctx: IPaiContext,
  workspace: string,
  id: string,
  onError: (message: string) => void
): string {
  const [text, setText] = React.useState('');
  React.useEffect(() => {
    const controller = new AbortController();
    let offset = 0;
    let stopped = false;
    const { api } = ctx.model;
    const run = async () => {
      let failures = 0;
      while (!stopped) {
        try {
          offset = await api.followLogs(workspace, id, {
            offset,
            signal: controller.signal,
            onText: chunk => setText(current => current + chunk)
          });
          failures = 0;
          const job = await api.getJob(workspace, id);
          if (isTerminal(job.state)) {
            // One last read picks up whatever the job wrote after the stream closed.
            offset = await api.followLogs(workspace, id, {
              offset,
              signal: controller.signal,
              onText: chunk => setText(current => current + chunk)
            });
            return;
          }
        } catch (error) {
          if (stopped || (error as Error)?.name === 'AbortError') {
            return;
          }
          if (error instanceof PaiApiError && (error.status === 404 || error.status === 403)) {
            onError(error.message);
            return;
          }
          failures++;
          onError(errorMessage(error));
        }
        await new Promise(resolve => window.setTimeout(resolve, Math.min(1000 * 2 ** failures, 15000)));
      }
    };
    void run();
    return () => {
      stopped = true;
      controller.abort();
    };
  }, [workspace, id]);
  return text;
}

export function JobDetail(props: { ctx: IPaiContext; workspace: string; id: string; onBack: () => void }) {
  const { ctx, workspace, id } = props;
  const { model } = ctx;
  const { api, trans } = model;
  const [job, setJob] = React.useState<IJob | null>(null);
  const [error, setError] = React.useState('');
  const [logError, setLogError] = React.useState('');
  const [busy, setBusy] = React.useState(false);
  const [tab, setTab] = React.useState<'logs' | 'metrics' | 'params' | 'env'>('logs');
  const logs = useLogFollow(ctx, workspace, id, setLogError);
  const logRef = React.useRef<HTMLPreElement>(null);
  const stick = React.useRef(true);

  const load = React.useCallback(async () => {
    try {
      const fresh = await api.getJob(workspace, id);
      setJob(fresh);
      setError('');
    } catch (err) {
      setError(errorMessage(err));
    }
  }, [api, workspace, id]);

  usePolling(() => void load(), model.settings.refreshInterval, !job || !isTerminal(job.state), [load]);
  useSignal(model.jobsTouched, touched => {
    if (touched === id) {
      void load();
    }
  });

  React.useEffect(() => {
    const el = logRef.current;
    if (el && stick.current) {
      el.scrollTop = el.scrollHeight;
    }
  }, [logs, tab]);

  const cancel = async () => {
    if (!job) {
      return;
    }
    const ok = await confirm(
      trans,
      trans.__('Cancel job?'),
      trans.__('Job %1 will be stopped. Its outputs so far are kept.', jobTitle(job)),
      trans.__('Cancel job')
    );
    if (!ok) {
      return;
    }
    setBusy(true);
    try {
      setJob(await api.cancelJob(workspace, id));
      model.touchJobs(id);
    } catch (err) {
      setError(errorMessage(err));
    } finally {
      setBusy(false);
    }
  };

  const rerun = async () => {
    if (!job) {
      return;
    }
    setBusy(true);
    try {
      const snapshot = JSON.parse(await api.readText(workspace, `jobs/${id}/input.ipynb`));
      const fresh = await api.submitNotebook(rerunRequest(job, snapshot));
      Notification.success(trans.__('Submitted job %1 (re-run of %2).', fresh.id, id), { autoClose: 6000 });
      model.touchJobs(fresh.id);
      model.show('jobs', fresh.id);
    } catch (err) {
      setError(trans.__('Re-run failed: %1', errorMessage(err)));
    } finally {
      setBusy(false);
    }
  };

  const register = async () => {
    if (job) {
      await registerModelDialog(ctx, job);
    }
  };

  const series = metricSeries(job?.metrics);
  const params = Object.entries(job?.spec?.parameters ?? {});
  const env = job?.environment ?? {};
  const packages = (env as any).packages;

  return (
    <div className="pai-Section pai-JobDetail" data-job-id={id}>
      <div className="pai-Toolbar">
        <IconButton icon={caretLeftIcon} label={trans.__('Back to jobs')} onClick={props.onBack} />
        <span className="pai-JobDetail-title">{job ? jobTitle(job) : id}</span>
        {job && <StateBadge state={job.state} trans={trans} />}
      </div>
      <ErrorBox message={error} onRetry={() => void load()} retryLabel={trans.__('Retry')} />
      {!job && !error && <Loading label={trans.__('Loading job…')} />}
      {job && (
        <>
          <KeyValues
            rows={[
              [trans.__('Id'), <code key="id">{job.id}</code>],
              [trans.__('Source'), jobSource(job)],
              [trans.__('Owner'), job.owner],
              [trans.__('Profile'), job.spec?.profile ?? ''],
              [trans.__('Workers'), String(job.spec?.workers ?? 1)],
              [trans.__('Attempt'), String(job.attempt ?? 1)],
              [trans.__('Created'), formatTimestamp(job.created_at)],
              [trans.__('Duration'), formatDuration(jobDurationSeconds(job))],
              ...(job.wait_reason && !isTerminal(job.state)
                ? ([[trans.__('Waiting'), job.wait_reason]] as [string, string][])
                : []),
              ...(job.exit_reason ? ([[trans.__('Exit'), job.exit_reason]] as [string, string][]) : [])
            ]}
          />
          <div className="pai-Actions">
            {!isTerminal(job.state) && (
              <TextButton warn icon={stopIcon} label={trans.__('Cancel')} onClick={() => void cancel()} disabled={busy} />
            )}
            <TextButton icon={runIcon} label={trans.__('Re-run')} onClick={() => void rerun()} disabled={busy || !job.spec?.source?.notebook} />
            <TextButton
              icon={notebookIcon}
              label={trans.__('Output notebook')}
              title={trans.__('Open the executed notebook in JupyterLab')}
              disabled={!isTerminal(job.state) || !job.spec?.source?.notebook}
              onClick={() => void openArtifact(ctx, workspace, `jobs/${id}/output.ipynb`)}
            />
            <TextButton
              icon={folderIcon}
              label={trans.__('Outputs')}
              title={trans.__('Open the outputs in Artifacts')}
              onClick={() => model.show('artifacts', `jobs/${id}/outputs`)}
            />
            {job.state === 'succeeded' && (
              <TextButton label={trans.__('Register model')} onClick={() => void register()} />
            )}
          </div>
          <div className="pai-Tabs" role="tablist" aria-label={trans.__('Job details')}>
            {(
              [
                ['logs', trans.__('Logs')],
                ['metrics', trans.__('Metrics')],
                ['params', trans.__('Parameters')],
                ['env', trans.__('Environment')]
              ] as [typeof tab, string][]
            ).map(([key, label]) => (
              <button
                key={key}
                role="tab"
                aria-selected={tab === key}
                className={tab === key ? 'pai-mod-active' : ''}
                onClick={() => setTab(key)}
              >
                {label}
              </button>
            ))}
          </div>
          <div role="tabpanel" className="pai-TabPanel">
            {tab === 'logs' && (
              <>
                <ErrorBox message={logError} />
                <pre
                  className="pai-Logs"
                  ref={logRef}
                  tabIndex={0}
                  aria-label={trans.__('Job log')}
                  onScroll={event => {
                    const el = event.currentTarget;
                    stick.current = el.scrollHeight - el.scrollTop - el.clientHeight < 24;
                  }}
                >
                  {logs || (isTerminal(job.state) ? trans.__('(no output)') : trans.__('Waiting for output…'))}
                </pre>
              </>
            )}
            {tab === 'metrics' &&
              (series.size ? (
                <div className="pai-Metrics">
                  {Array.from(series.entries()).map(([name, points]) => (
                    <MetricChart key={name} name={name} points={points} />
                  ))}
                </div>
              ) : (
                <Empty>{trans.__('No metrics logged. Call pai_lab.log_metric(name, value, step) in the notebook.')}</Empty>
              ))}
            {tab === 'params' &&
              (params.length ? (
                <KeyValues rows={params.map(([k, v]) => [k, <code key={k}>{JSON.stringify(v)}</code>])} />
              ) : (
                <Empty>{trans.__('This job ran with the notebook defaults (no parameters).')}</Empty>
              ))}
            {tab === 'env' &&
              (Object.keys(env).length ? (
                <>
                  <KeyValues
                    rows={Object.entries(env)
                      .filter(([k]) => k !== 'packages')
                      .map(([k, v]) => [k, typeof v === 'string' ? v : <code key={k}>{JSON.stringify(v)}</code>])}
                  />
                  {packages && (
                    <details className="pai-Packages">
                      <summary>
                        {trans.__('Packages (%1)', Array.isArray(packages) ? packages.length : Object.keys(packages).length)}
                      </summary>
                      <pre>
                        {Array.isArray(packages)
                          ? packages.join('\n')
                          : Object.entries(packages)
                              .map(([k, v]) => `${k}==${v}`)
                              .join('\n')}
                      </pre>
                    </details>
                  )}
                </>
              ) : (
                <Empty>{trans.__('The environment is captured when the job starts.')}</Empty>
              ))}
          </div>
        </>
      )}
    </div>
  );
}
