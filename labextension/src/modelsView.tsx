/**
 * The Models section: registered models, their versions (metrics, lineage), aliases,
 * and the Register / Promote / Deploy actions. Promotion shows the evaluation gate's
 * verdict (a 422 from the control plane carries it in its message).
 */
import * as React from 'react';

import { Clipboard, Notification } from '@jupyterlab/apputils';
import { caretLeftIcon, refreshIcon } from '@jupyterlab/ui-components';

import { IPaiContext } from './actions';
import { errorMessage, PaiApiError } from './api';
import { Empty, ErrorBox, IconButton, KeyValues, Loading, TextButton, usePolling } from './components';
import { formDialog } from './forms';
import { checkName, formatTimestamp } from './format';
import { IJob, IModel, IModelVersion } from './types';

/** Dialog: register a job output as a new model version. */
export async function registerModelDialog(ctx: IPaiContext, job: IJob): Promise<void> {
  const { api, trans } = ctx.model;
  const outputs = job.spec?.outputs ?? [];
  const guess = outputs.find(o => /\.(joblib|pkl|pickle|pt|pth)$/.test(o)) ?? outputs[0] ?? 'model.joblib';
  const result = await formDialog({
    title: trans.__('Register model from job %1', job.id),
    accept: trans.__('Register'),
    trans,
    fields: [
      { name: 'name', label: trans.__('Model name'), value: (job.spec?.name ?? '').toLowerCase() },
      {
        name: 'path',
        label: trans.__('Model file (in the job folder)'),
        value: `outputs/${guess}`
      },
      {
        name: 'framework',
        label: trans.__('Framework'),
        kind: 'select',
        options: [
          { value: 'sklearn', label: 'scikit-learn (joblib/pickle)' },
          { value: 'torch', label: 'PyTorch (TorchScript)' }
        ],
        value: /\.(pt|pth)$/.test(guess) ? 'torch' : 'sklearn'
      }
    ],
    validate: values => {
      const path = values.path.trim();
      if (!path || path.startsWith('/') || path.split('/').includes('..')) {
        throw new Error(trans.__('The model file must be a path inside the job folder.'));
      }
      return { name: checkName(values.name, trans.__('Model name')), path, framework: values.framework };
    }
  });
  if (!result) {
    return;
  }
  try {
    const version = await api.registerVersion(job.workspace, result.name, {
      from_job: job.id,
      path: result.path,
      framework: result.framework
    });
    Notification.success(trans.__('Registered %1 version %2.', result.name, String(version?.version ?? '')), {
      autoClose: 6000,
      actions: [{ label: trans.__('Show model'), callback: () => ctx.model.show('models', result.name) }]
    });
  } catch (err) {
    Notification.error(trans.__('Could not register the model: %1', errorMessage(err)), { autoClose: false });
  }
}

function aliasesOf(model: IModel): [string, string][] {
  return Object.entries(model.aliases ?? {}).map(([alias, version]) => [alias, String(version)]);
}

export function ModelsView(props: { ctx: IPaiContext }) {
  const { ctx } = props;
  const { model } = ctx;
  const { api, trans } = model;
  const workspace = model.workspace;
  const [models, setModels] = React.useState<IModel[] | null>(null);
  const [error, setError] = React.useState('');
  const [selected, setSelected] = React.useState<string | null>(
    () => model.takeTarget('models') ?? null
  );

  const load = React.useCallback(async () => {
    if (!workspace) {
      return;
    }
    try {
      setModels(await api.listModels(workspace));
      setError('');
    } catch (err) {
      setModels(current => current ?? []);
      setError(errorMessage(err));
    }
  }, [api, workspace]);

  usePolling(() => void load(), model.settings.refreshInterval * 3, !!workspace && !selected, [load]);
  React.useEffect(() => {
    const slot = (_: unknown, nav: { section: string }) => {
      const target = nav.section === 'models' ? model.takeTarget('models') : undefined;
      if (target) {
        setSelected(target);
      }
    };
    model.navigate.connect(slot);
    return () => {
      model.navigate.disconnect(slot);
    };
  }, [model]);

  if (!workspace) {
    return <Empty>{trans.__('Select a workspace to see its models.')}</Empty>;
  }
  if (selected) {
    return <ModelDetail ctx={ctx} workspace={workspace} name={selected} onBack={() => setSelected(null)} />;
  }
  return (
    <div className="pai-Section pai-Models">
      <div className="pai-Toolbar">
        <span className="pai-ToolbarTitle">{trans.__('Registered models')}</span>
        <span className="pai-Spacer" />
        <IconButton icon={refreshIcon} label={trans.__('Refresh models')} onClick={() => void load()} />
      </div>
      <ErrorBox message={error} onRetry={() => void load()} retryLabel={trans.__('Retry')} />
      {models === null && !error && <Loading label={trans.__('Loading models…')} />}
      {models !== null && models.length === 0 && !error && (
        <Empty>
          {trans.__('No models registered yet. Open a succeeded job and press "Register model".')}
        </Empty>
      )}
      {models && models.length > 0 && (
        <ul className="pai-List" aria-label={trans.__('Models')}>
          {models.map(m => (
            <li
              key={m.name}
              className="pai-ListItem"
              tabIndex={0}
              role="button"
              data-model={m.name}
              onClick={() => setSelected(m.name)}
              onKeyDown={event => {
                if (event.key === 'Enter' || event.key === ' ') {
                  event.preventDefault();
                  setSelected(m.name);
                }
              }}
            >
              <div className="pai-JobItem-main">
                <span className="pai-JobItem-title">{m.name}</span>
                {m.latest_version !== undefined && m.latest_version !== null && (
                  <span className="pai-Tag">v{String(m.latest_version)}</span>
                )}
              </div>
              <div className="pai-JobItem-meta">
                {aliasesOf(m).map(([alias, version]) => (
                  <span key={alias} className="pai-Tag pai-Tag-alias">
                    {alias} → v{version}
                  </span>
                ))}
                {m.gate && <span title={trans.__('Evaluation gate')}>⚖ {m.gate}</span>}
              </div>
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}

function ModelDetail(props: { ctx: IPaiContext; workspace: string; name: string; onBack: () => void }) {
  const { ctx, workspace, name } = props;
  const { api, trans } = ctx.model;
  const [info, setInfo] = React.useState<IModel | null>(null);
  const [versions, setVersions] = React.useState<IModelVersion[] | null>(null);
  const [error, setError] = React.useState('');
  const [gate, setGate] = React.useState<{ ok: boolean; message: string } | null>(null);

  const load = React.useCallback(async () => {
    try {
      const [m, v] = await Promise.all([api.getModel(workspace, name), api.listVersions(workspace, name)]);
      setInfo(m);
      setVersions([...v].sort((a, b) => Number(b.version) - Number(a.version)));
      setError('');
    } catch (err) {
      setError(errorMessage(err));
    }
  }, [api, workspace, name]);

  React.useEffect(() => {
    void load();
  }, [load]);

  const promote = async (version: IModelVersion) => {
    const result = await formDialog({
      title: trans.__('Promote %1 version %2', name, String(version.version)),
      accept: trans.__('Promote'),
      trans,
      intro: info?.gate
        ? trans.__('The evaluation gate "%1" is checked against this version\'s metrics.', info.gate)
        : trans.__('This model has no evaluation gate.'),
      fields: [
        {
          name: 'alias',
          label: trans.__('Alias'),
          kind: 'select',
          options: ['staging', 'production', ...Object.keys(info?.aliases ?? {})]
            .filter((a, i, all) => all.indexOf(a) === i)
            .map(a => ({ value: a, label: a }))
        }
      ],
      validate: values => checkName(values.alias, trans.__('Alias'))
    });
    if (!result) {
      return;
    }
    try {
      const answer: any = await api.setAlias(workspace, name, result, version.version);
      const verdict: string = answer?.gate_result?.summary ?? '';
      setGate({
        ok: true,
        message:
          trans.__('%1 now points at version %2.', result, String(version.version)) +
          (verdict ? `\n${verdict}` : '')
      });
      void load();
    } catch (err) {
      const refused = err instanceof PaiApiError && err.status === 422;
      const verdict: string | undefined = refused ? (err as PaiApiError).detail?.gate?.summary : undefined;
      setGate({
        ok: false,
        message: refused
          ? trans.__('Refused by the evaluation gate: %1', verdict ?? errorMessage(err))
          : trans.__('Promotion failed: %1', errorMessage(err))
      });
    }
  };

  const deploy = async (target: string) => {
    const result = await formDialog({
      title: trans.__('Deploy %1', target),
      accept: trans.__('Deploy'),
      trans,
      fields: [
        { name: 'name', label: trans.__('Deployment name'), value: `${name}-svc` },
        { name: 'replicas', label: trans.__('Replicas'), kind: 'number', value: '1', min: 1 }
      ],
      validate: values => {
        const replicas = Number(values.replicas);
        if (!Number.isInteger(replicas) || replicas < 1) {
          throw new Error(trans.__('Replicas must be a whole number of at least 1.'));
        }
        return { name: checkName(values.name, trans.__('Deployment name')), replicas };
      }
    });
    if (!result) {
      return;
    }
    try {
      const dep = await api.createDeployment(workspace, { name: result.name, model: target, replicas: result.replicas });
      const token = dep?.token ? String(dep.token) : '';
      Notification.success(
        token
          ? trans.__('Deployment %1 created. Its token is shown only now: copy it.', dep?.name ?? result.name)
          : trans.__('Deployment %1 created.', dep?.name ?? result.name),
        {
          autoClose: token ? false : 6000,
          actions: [
            ...(token
              ? [{ label: trans.__('Copy token'), callback: () => Clipboard.copyToSystem(token) }]
              : []),
            { label: trans.__('Show'), callback: () => ctx.model.show('deployments', result.name) }
          ]
        }
      );
    } catch (err) {
      setError(trans.__('Deploy failed: %1', errorMessage(err)));
    }
  };

  const aliases = info ? aliasesOf(info) : [];
  return (
    <div className="pai-Section pai-ModelDetail" data-model={name}>
      <div className="pai-Toolbar">
        <IconButton icon={caretLeftIcon} label={trans.__('Back to models')} onClick={props.onBack} />
        <span className="pai-JobDetail-title">{name}</span>
        <span className="pai-Spacer" />
        <IconButton icon={refreshIcon} label={trans.__('Refresh')} onClick={() => void load()} />
      </div>
      <ErrorBox message={error} onRetry={() => void load()} retryLabel={trans.__('Retry')} />
      {gate && (
        <div className={gate.ok ? 'pai-Success' : 'pai-Error'} role="status">
          {gate.message}
        </div>
      )}
      {!info && !error && <Loading label={trans.__('Loading model…')} />}
      {info && (
        <>
          <KeyValues
            rows={[
              ...(info.description ? ([[trans.__('Description'), info.description]] as [string, string][]) : []),
              [trans.__('Gate'), info.gate || trans.__('none')],
              ...aliases.map(([alias, version]) => [trans.__('Alias %1', alias), `v${version}`] as [string, string])
            ]}
          />
          <div className="pai-Actions">
            {aliases.map(([alias]) => (
              <TextButton key={alias} accept label={trans.__('Deploy @%1', alias)} onClick={() => void deploy(`${name}@${alias}`)} />
            ))}
          </div>
        </>
      )}
      {versions && versions.length === 0 && <Empty>{trans.__('No versions.')}</Empty>}
      {versions && versions.length > 0 && (
        <ul className="pai-List" aria-label={trans.__('Versions')}>
          {versions.map(v => (
            <li key={String(v.version)} className="pai-ListItem pai-Version" data-version={String(v.version)}>
              <div className="pai-JobItem-main">
                <span className="pai-JobItem-title">v{String(v.version)}</span>
                {aliases
                  .filter(([, version]) => version === String(v.version))
                  .map(([alias]) => (
                    <span key={alias} className="pai-Tag pai-Tag-alias">
                      {alias}
                    </span>
                  ))}
                <span className="pai-Spacer" />
                <TextButton label={trans.__('Promote')} onClick={() => void promote(v)} />
                <TextButton label={trans.__('Deploy')} onClick={() => void deploy(`${name}:${v.version}`)} />
              </div>
              <div className="pai-JobItem-meta">
                {v.framework && <span>{v.framework}</span>}
                {Object.entries(v.metrics ?? {}).map(([k, val]) => (
                  <span key={k}>
                    {k}={typeof val === 'number' ? Number(val.toPrecision(4)) : String(val)}
                  </span>
                ))}
                {v.source_job && (
                  <button className="pai-LinkButton" onClick={() => ctx.model.show('jobs', String(v.source_job))}>
                    {trans.__('job %1', String(v.source_job).slice(0, 12))}
                  </button>
                )}
                {v.created_at && <span>{formatTimestamp(v.created_at)}</span>}
              </div>
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}
