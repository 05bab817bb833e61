/**
 * The pure half of "Submit as job": dialog defaults from the notebook, and the
 * `POST pai/api/notebook-jobs` request from the dialog's values.
 */
import { PathExt } from '@jupyterlab/coreutils';

import {
  findParametersCell,
  formatParameters,
  ICellLike,
  parseDuration,
  parseOutputs,
  parseParameterLines,
  parseParametersCell
} from './params';
import { INotebookJobRequest } from './types';

export interface ISubmitDefaults {
  name: string;
  parameters: string;
  skipped: string[];
}

/** Dialog defaults for a notebook: its name and its `parameters` cell's values. */
export function submitDefaults(path: string, notebook: { cells?: ICellLike[] }): ISubmitDefaults {
  const source = findParametersCell(notebook.cells ?? []);
  const parsed = source === null ? { values: {}, skipped: [] } : parseParametersCell(source);
  return {
    name: PathExt.basename(path, PathExt.extname(path)),
    parameters: formatParameters(parsed.values),
    skipped: parsed.skipped
  };
}

/**
 * Build the request from the dialog's values. Throws an Error naming the field that
 * is wrong, which the dialog shows.
 */
export function buildSubmitRequest(
  values: Record<string, string>,
  context: { path: string; content: unknown; workspace: string }
): INotebookJobRequest {
  if (!context.workspace) {
    throw new Error('Select a workspace in the PAI sidebar first.');
  }
  const workers = Number(values.workers || '1');
  if (!Number.isInteger(workers) || workers < 1 || workers > 64) {
    throw new Error(`Workers must be a whole number from 1 to 64, got "${values.workers}".`);
  }
  const retries = Number(values.retries || '0');
  if (!Number.isInteger(retries) || retries < 0 || retries > 10) {
    throw new Error(`Retries must be a whole number from 0 to 10, got "${values.retries}".`);
  }
  // Relative to the notebook's folder: the server extension resolves them there.
  const files = parseOutputs(values.files ?? '');
  const request: INotebookJobRequest = {
    path: context.path,
    content: context.content,
    workspace: context.workspace,
    parameters: parseParameterLines(values.parameters ?? ''),
    workers,
    retries,
    max_runtime: parseDuration(values.max_runtime ?? ''),
    outputs: parseOutputs(values.outputs ?? '')
  };
  const name = (values.name ?? '').trim();
  if (name) {
    request.name = name;
  }
  if (values.profile) {
    request.profile = values.profile;
  }
  if (files.length) {
    request.files = files;
  }
  return request;
}

