/**
 * "Submit as job": the dialog that turns the open notebook (with its unsaved edits)
 * into a `POST pai/api/notebook-jobs` request, and the confirmation notification.
 */
import { Notification } from '@jupyterlab/apputils';
import { PathExt } from '@jupyterlab/coreutils';
import { NotebookPanel } from '@jupyterlab/notebook';

import { errorMessage } from './api';
import { formDialog, IFormField } from './forms';
import { PaiModel } from './model';
import { ICellLike } from './params';
import { buildSubmitRequest, submitDefaults } from './submitRequest';
import { IJob, IProfile } from './types';

function profileLabel(profile: IProfile): string {
  const label = profile.display_name || profile.slug;
  if (profile.available === false) {
    return `${label} (${profile.unavailable_reason || 'unavailable'})`;
  }
  return label;
}

/**
 * Open the submit dialog for a notebook and submit it. Resolves with the job, or null
 * when the user cancelled. Failures are shown as notifications.
 */
export async function submitNotebook(
  model: PaiModel,
  panel: NotebookPanel,
  onShowJob: (job: IJob) => void
): Promise<IJob | null> {
  const { trans } = model;
  if (!model.me) {
    await model.refresh();
  }
  if (!model.workspace) {
    Notification.error(
      model.error
        ? trans.__('Cannot submit: %1', model.error)
        : trans.__('Cannot submit: you are not a member of any workspace.'),
      { autoClose: false }
    );
    return null;
  }
  const path = panel.context.path;
  const content = panel.context.model.toJSON() as { cells?: ICellLike[] };
  const defaults = submitDefaults(path, content);
  let profiles: IProfile[] = [];
  let profileError = '';
  try {
    profiles = await model.profiles();
  } catch (error) {
    profileError = errorMessage(error);
  }
  const usable = profiles.filter(p => p.available !== false);
  const defaultProfile = usable.find(p => p.default)?.slug ?? usable[0]?.slug ?? profiles[0]?.slug ?? '';
  const fields: IFormField[] = [
    { name: 'name', label: trans.__('Job name'), value: defaults.name },
    {
      name: 'profile',
      label: trans.__('Profile'),
      kind: 'select',
      value: defaultProfile,
      options: profiles.length
        ? profiles.map(p => ({ value: p.slug, label: profileLabel(p) }))
        : [{ value: '', label: trans.__('Workspace default') }],
      help: profileError ? trans.__('Could not load profiles: %1', profileError) : undefined
    },
    {
      name: 'parameters',
      label: trans.__('Parameters (NAME=VALUE per line, VALUE in JSON)'),
      kind: 'textarea',
      value: defaults.parameters,
      help: defaults.skipped.length
        ? trans.__('Not pre-filled (not literals): %1', defaults.skipped.join(', '))
        : trans.__('Pre-filled from the cell tagged "parameters".')
    },
    { name: 'workers', label: trans.__('Workers'), kind: 'number', value: '1', min: 1, inline: true },
    {
      name: 'max_runtime',
      label: trans.__('Max runtime'),
      value: '1h',
      inline: true,
      placeholder: trans.__('e.g. 30m, 2h; empty for no limit')
    },
    { name: 'retries', label: trans.__('Retries'), kind: 'number', value: '0', min: 0, inline: true },
    {
      name: 'outputs',
      label: trans.__('Outputs to keep'),
      value: '',
      placeholder: 'model.joblib, metrics.json'
    },
    {
      name: 'files',
      label: trans.__('Files to include (next to the notebook)'),
      value: '',
      placeholder: 'data.csv, utils.py'
    },
  ];
  const request = await formDialog({
    title: trans.__('Submit %1 as a job in %2', PathExt.basename(path), model.workspace),
    accept: trans.__('Submit'),
    trans,
    fields,
    intro: panel.context.model.dirty
      ? trans.__('Unsaved edits are included in the job.')
      : undefined,
    validate: values =>
      buildSubmitRequest(values, {
        path,
        content: panel.context.model.toJSON(),
        workspace: model.workspace
      })
  });
  if (!request) {
    return null;
  }
  try {
    const job = await model.api.submitNotebook(request);
    model.touchJobs(job.id);
    Notification.success(trans.__('Submitted job %1', job.id), {
      autoClose: 8000,
      actions: [{ label: trans.__('Show job'), callback: () => onShowJob(job) }]
    });
    return job;
  } catch (error) {
    Notification.error(trans.__('Submit failed: %1', errorMessage(error)), { autoClose: false });
    return null;
  }
}
