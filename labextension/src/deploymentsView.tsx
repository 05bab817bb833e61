/**
 * The Deployments section: model endpoints with their state, variants and traffic
 * split, the endpoint URL and a copyable curl example (V2 inference protocol).
 */
import * as React from 'react';

import { caretLeftIcon, refreshIcon } from '@jupyterlab/ui-components';

import { IPaiContext } from './actions';
import { errorMessage } from './api';
import { CopyText, Empty, ErrorBox, IconButton, KeyValues, Loading, TextButton, usePolling, useSignal } from './components';
import { formDialog } from './forms';
import { curlExample, endpointOf, servedModel } from './format';
import { IDeployment } from './types';

export function DeploymentsView(props: { ctx: IPaiContext }) {
  const { ctx } = props;
  const { model } = ctx;
  const { api, trans } = model;
  const workspace = model.workspace;
  const [items, setItems] = React.useState<IDeployment[] | null>(null);
  const [error, setError] = React.useState('');
  const [selected, setSelected] = React.useState<string | null>(
    () => model.takeTarget('deployments') ?? null
  );

  const load = React.useCallback(async () => {
    if (!workspace) {
      return;
    }
    try {
      setItems(await api.listDeployments(workspace));
      setError('');
    } catch (err) {
      setItems(current => current ?? []);
      setError(errorMessage(err));
    }
  }, [api, workspace]);

  usePolling(() => void load(), model.settings.refreshInterval * 2, !!workspace, [load]);
  useSignal(model.navigate, ({ section }) => {
    const target = section === 'deployments' ? model.takeTarget('deployments') : undefined;
    if (target) {
      setSelected(target);
      void load();
    }
  });

  if (!workspace) {
    return <Empty>{trans.__('Select a workspace to see its deployments.')}</Empty>;
  }
  const current = selected ? items?.find(d => d.name === selected) : undefined;
  if (selected) {
    return (
      <DeploymentDetail
        ctx={ctx}
        workspace={workspace}
        name={selected}
        deployment={current}
        onChanged={() => void load()}
        onBack={() => setSelected(null)}
      />
    );
  }
  return (
    <div className="pai-Section pai-Deployments">
      <div className="pai-Toolbar">
        <span className="pai-ToolbarTitle">{trans.__('Endpoints')}</span>
        <span className="pai-Spacer" />
        <IconButton icon={refreshIcon} label={trans.__('Refresh deployments')} onClick={() => void load()} />
      </div>
      <ErrorBox message={error} onRetry={() => void load()} retryLabel={trans.__('Retry')} />
      {items === null && !error && <Loading label={trans.__('Loading deployments…')} />}
      {items !== null && items.length === 0 && !error && (
        <Empty>{trans.__('No deployments. Open a model in Models and press "Deploy".')}</Empty>
      )}
      {items && items.length > 0 && (
        <ul className="pai-List" aria-label={trans.__('Deployments')}>
          {items.map(dep => (
            <li
              key={dep.name}
              className="pai-ListItem"
              tabIndex={0}
              role="button"
              data-deployment={dep.name}
              onClick={() => setSelected(dep.name)}
              onKeyDown={event => {
                if (event.key === 'Enter' || event.key === ' ') {
                  event.preventDefault();
                  setSelected(dep.name);
                }
              }}
            >
              <div className="pai-JobItem-main">
                <span className="pai-JobItem-title">{dep.name}</span>
                {dep.state && (
                  <span className={`pai-Badge pai-Badge-${dep.state}`} data-state={dep.state}>
                    {dep.state}
                  </span>
                )}
              </div>
              <div className="pai-JobItem-meta">
                <span>{dep.model ?? ''}</span>
                <span className="pai-Url">{endpointOf(dep)}</span>
              </div>
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}

function DeploymentDetail(props: {
  ctx: IPaiContext;
  workspace: string;
  name: string;
  deployment?: IDeployment;
  onChanged: () => void;
  onBack: () => void;
}) {
  const { ctx, workspace, name } = props;
  const { api, trans } = ctx.model;
  const [dep, setDep] = React.useState<IDeployment | null>(props.deployment ?? null);
  const [error, setError] = React.useState('');

  const load = React.useCallback(async () => {
    try {
      setDep(await api.getDeployment(workspace, name));
      setError('');
    } catch (err) {
      setError(errorMessage(err));
    }
  }, [api, workspace, name]);
  React.useEffect(() => {
    void load();
  }, [load]);

  const editTraffic = async () => {
    if (!dep) {
      return;
    }
    const variants = dep.variants ?? [];
    const result = await formDialog({
      title: trans.__('Traffic of %1', name),
      accept: trans.__('Apply'),
      trans,
      intro: trans.__('One line per variant: MODEL:VERSION=PERCENT (add "shadow" to mirror without answering). Percentages must add up to 100.'),
      fields: [
        {
          name: 'traffic',
          label: trans.__('Variants'),
          kind: 'textarea',
          value: variants
            .map(v => `${v.model ?? ''}${v.version !== undefined ? `:${v.version}` : ''}=${v.weight ?? 0}${v.shadow ? ' shadow' : ''}`)
            .join('\n')
        }
      ],
      validate: values => {
        const parsed = values.traffic
          .split('\n')
          .map(line => line.trim())
          .filter(line => line)
          .map(line => {
            const m = /^([^=\s]+)\s*=\s*(\d+(?:\.\d+)?)\s*(shadow)?$/.exec(line);
            if (!m) {
              throw new Error(trans.__('"%1" is not MODEL:VERSION=PERCENT.', line));
            }
            const [model, version] = m[1].split(':');
            // Keep the name and replicas of a variant that stays, so it keeps running.
            const same = variants.find(v => v.model === model && String(v.version) === version);
            return {
              ...(same?.name ? { name: same.name } : {}),
              ...(same?.replicas ? { replicas: same.replicas } : {}),
              model,
              ...(version ? { version } : {}),
              weight: Number(m[2]),
              shadow: !!m[3]
            };
          });
        const total = parsed.filter(v => !v.shadow).reduce((sum, v) => sum + v.weight, 0);
        if (Math.abs(total - 100) > 1e-6) {
          throw new Error(trans.__('The weights add up to %1, not 100.', total));
        }
        return parsed;
      }
    });
    if (!result) {
      return;
    }
    try {
      setDep(await api.updateDeployment(workspace, name, { variants: result }));
      props.onChanged();
    } catch (err) {
      setError(trans.__('Could not change the traffic: %1', errorMessage(err)));
    }
  };

  const endpoint = dep ? endpointOf(dep) : '';
  return (
    <div className="pai-Section pai-DeploymentDetail" data-deployment={name}>
      <div className="pai-Toolbar">
        <IconButton icon={caretLeftIcon} label={trans.__('Back to deployments')} onClick={props.onBack} />
        <span className="pai-JobDetail-title">{name}</span>
        <span className="pai-Spacer" />
        <IconButton icon={refreshIcon} label={trans.__('Refresh')} onClick={() => void load()} />
      </div>
      <ErrorBox message={error} onRetry={() => void load()} retryLabel={trans.__('Retry')} />
      {!dep && !error && <Loading label={trans.__('Loading deployment…')} />}
      {dep && (
        <>
          <KeyValues
            rows={[
              [trans.__('State'), dep.state ?? ''],
              [trans.__('Model'), dep.model ?? ''],
              [trans.__('Backend'), String(dep.backend ?? '')],
              ...(dep.token_hint ? ([[trans.__('Token'), String(dep.token_hint)]] as [string, string][]) : [])
            ]}
          />
          {endpoint ? (
            <>
              <h3 className="pai-Heading">{trans.__('Endpoint')}</h3>
              <CopyText text={endpoint} label={trans.__('Copy endpoint URL')} />
              <h3 className="pai-Heading">{trans.__('Try it')}</h3>
              <CopyText multiline text={curlExample(endpoint, servedModel(dep))} label={trans.__('Copy curl example')} />
              <div className="pai-Note">
                {trans.__('$TOKEN is the deployment token (pai-lab deploy show %1).', name)}
              </div>
            </>
          ) : (
            <Empty>{trans.__('The endpoint URL appears when the deployment is ready.')}</Empty>
          )}
          <h3 className="pai-Heading">{trans.__('Traffic')}</h3>
          {(dep.variants ?? []).length ? (
            <table className="pai-FileTable">
              <thead>
                <tr>
                  <th scope="col">{trans.__('Variant')}</th>
                  <th scope="col">{trans.__('Replicas')}</th>
                  <th scope="col">{trans.__('Weight')}</th>
                </tr>
              </thead>
              <tbody>
                {(dep.variants ?? []).map((v, i) => (
                  <tr key={i}>
                    <td>
                      {v.name ?? `${v.model ?? ''}${v.version !== undefined ? `:${v.version}` : ''}`}
                      {v.shadow ? ` (${trans.__('shadow')})` : ''}
                    </td>
                    <td>{v.replicas ?? ''}</td>
                    <td>{v.weight !== undefined ? `${v.weight}%` : ''}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          ) : (
            <Empty>{trans.__('No variants reported.')}</Empty>
          )}
          <div className="pai-Actions">
            <TextButton label={trans.__('Edit traffic')} onClick={() => void editTraffic()} />
          </div>
        </>
      )}
    </div>
  );
}
