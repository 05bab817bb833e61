/**
 * The PAI sidebar: workspace picker on top, section tabs (Jobs, Artifacts, Models,
 * Deployments) below, one section shown at a time.
 */
import * as React from 'react';

import { ReactWidget, refreshIcon } from '@jupyterlab/ui-components';

import { IPaiContext } from './actions';
import { ArtifactsView } from './artifactsView';
import { Empty, ErrorBox, IconButton, Loading, useSignal } from './components';
import { DeploymentsView } from './deploymentsView';
import { paiIcon } from './icons';
import { JobsView } from './jobsView';
import { ModelsView } from './modelsView';
import { Section, SECTIONS } from './model';

function PaiApp(props: { ctx: IPaiContext }) {
  const { model } = props.ctx;
  const { trans } = model;
  const [, setTick] = React.useState(0);
  useSignal(model.changed, () => setTick(t => t + 1));
  const tabs = React.useRef<(HTMLButtonElement | null)[]>([]);

  const labels: Record<Section, string> = {
    jobs: trans.__('Jobs'),
    artifacts: trans.__('Artifacts'),
    models: trans.__('Models'),
    deployments: trans.__('Deployments')
  };

  const onTabKey = (event: React.KeyboardEvent, index: number) => {
    let next = -1;
    if (event.key === 'ArrowRight') {
      next = (index + 1) % SECTIONS.length;
    } else if (event.key === 'ArrowLeft') {
      next = (index + SECTIONS.length - 1) % SECTIONS.length;
    } else if (event.key === 'Home') {
      next = 0;
    } else if (event.key === 'End') {
      next = SECTIONS.length - 1;
    }
    if (next >= 0) {
      event.preventDefault();
      model.section = SECTIONS[next];
      tabs.current[next]?.focus();
    }
  };

  const me = model.me;
  const body = () => {
    if (model.error && !me) {
      return (
        <div className="pai-Section">
          <ErrorBox
            message={trans.__('Cannot reach the PAI service: %1', model.error)}
            onRetry={() => void model.refresh()}
            retryLabel={trans.__('Retry')}
          />
        </div>
      );
    }
    if (!me) {
      return <Loading label={trans.__('Connecting to PAI…')} />;
    }
    if (!model.workspaces.length) {
      return (
        <Empty>
          {trans.__('You are not a member of any workspace yet. Ask a workspace admin to add you.')}
        </Empty>
      );
    }
    switch (model.section) {
      case 'jobs':
        return <JobsView key={model.workspace} ctx={props.ctx} />;
      case 'artifacts':
        return <ArtifactsView key={model.workspace} ctx={props.ctx} />;
      case 'models':
        return <ModelsView key={model.workspace} ctx={props.ctx} />;
      case 'deployments':
        return <DeploymentsView key={model.workspace} ctx={props.ctx} />;
    }
  };

  return (
    <div className="pai-App">
      <header className="pai-Header">
        <paiIcon.react tag="span" className="pai-Header-icon" />
        <span className="pai-Header-title">PAI</span>
        <label className="pai-Header-workspace">
          <span className="pai-VisuallyHidden">{trans.__('Workspace')}</span>
          <select
            className="pai-Select pai-WorkspacePicker"
            aria-label={trans.__('Workspace')}
            title={trans.__('Workspace')}
            value={model.workspace}
            disabled={!model.workspaces.length}
            onChange={event => {
              model.workspace = event.target.value;
            }}
          >
            {model.workspaces.map(name => (
              <option key={name} value={name}>
                {name}
              </option>
            ))}
          </select>
        </label>
        {model.role && <span className="pai-Tag" title={trans.__('Your role')}>{model.role}</span>}
        <IconButton
          icon={refreshIcon}
          label={trans.__('Reload workspaces')}
          onClick={() => void model.refresh()}
          disabled={model.loading}
        />
      </header>
      {model.error && me && <ErrorBox message={model.error} />}
      <div className="pai-SectionTabs" role="tablist" aria-label={trans.__('PAI sections')}>
        {SECTIONS.map((section, index) => (
          <button
            key={section}
            ref={el => {
              tabs.current[index] = el;
            }}
            role="tab"
            id={`pai-tab-${section}`}
            data-section={section}
            aria-selected={model.section === section}
            tabIndex={model.section === section ? 0 : -1}
            className={model.section === section ? 'pai-mod-active' : ''}
            onClick={() => {
              model.section = section;
            }}
            onKeyDown={event => onTabKey(event, index)}
          >
            {labels[section]}
          </button>
        ))}
      </div>
      <div className="pai-Body" role="tabpanel" aria-labelledby={`pai-tab-${model.section}`}>
        {body()}
      </div>
    </div>
  );
}

export class PaiSidebar extends ReactWidget {
  constructor(private readonly ctx: IPaiContext) {
    super();
    this.id = 'pai-lab-sidebar';
    this.addClass('pai-Sidebar');
    this.title.icon = paiIcon;
    this.title.caption = ctx.model.trans.__('PAI: jobs, artifacts, models, deployments');
  }

  render(): JSX.Element {
    return <PaiApp ctx={this.ctx} />;
  }
}
