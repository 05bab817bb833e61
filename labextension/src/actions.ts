/**
 * Actions that reach outside the panel: opening artifacts in Lab (copied into the
 * user's Lab folder through the contents API), browser downloads, confirmations.
 */
import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { PathExt } from '@jupyterlab/coreutils';
import { Contents } from '@jupyterlab/services';
import { TranslationBundle } from '@jupyterlab/translation';

import { errorMessage, PaiApi } from './api';
import { fileKind, localCopyPath } from './format';
import { PaiModel } from './model';

export interface IPaiContext {
  model: PaiModel;
  contents: Contents.IManager;
  /** Open a path of the Lab file tree in Lab's default viewer. */
  open: (path: string) => void;
}

/** Make sure every folder above `path` exists in the Lab file tree. */
async function ensureFolders(contents: Contents.IManager, path: string): Promise<void> {
  const parts = path.split('/');
  parts.pop();
  let current = '';
  for (const part of parts) {
    current = current ? `${current}/${part}` : part;
    try {
      await contents.get(current, { content: false });
    } catch {
      await contents.save(current, { type: 'directory' });
    }
  }
}

function blobToBase64(blob: Blob): Promise<string> {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => {
      const url = String(reader.result);
      resolve(url.slice(url.indexOf(',') + 1));
    };
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

/**
 * Copy an artifact into the Lab folder (`pai-artifacts/<ws>/<path>`) and open it.
 * Returns the local path. Notebooks are stored as notebooks so Lab opens them in the
 * notebook editor; CSVs and text as text; everything else as base64.
 */
export async function openArtifactInLab(
  ctx: IPaiContext,
  workspace: string,
  path: string
): Promise<string> {
  const { api, trans } = ctx.model;
  const local = localCopyPath(workspace, path);
  const blob = await api.readFile(workspace, path);
  await ensureFolders(ctx.contents, local);
  const kind = fileKind(path);
  if (kind === 'notebook') {
    const text = await blob.text();
    let content: unknown;
    try {
      content = JSON.parse(text);
    } catch {
      throw new Error(trans.__('%1 is not a valid notebook.', path));
    }
    await ctx.contents.save(local, { type: 'notebook', format: 'json', content });
  } else if (kind === 'csv' || kind === 'text') {
    await ctx.contents.save(local, { type: 'file', format: 'text', content: await blob.text() });
  } else {
    await ctx.contents.save(local, {
      type: 'file',
      format: 'base64',
      content: await blobToBase64(blob)
    });
  }
  ctx.open(local);
  return local;
}

/** The same, reporting failures as a notification instead of throwing. */
export async function openArtifact(ctx: IPaiContext, workspace: string, path: string): Promise<void> {
  const { trans } = ctx.model;
  try {
    await openArtifactInLab(ctx, workspace, path);
  } catch (error) {
    Notification.error(trans.__('Could not open %1: %2', path, errorMessage(error)), {
      autoClose: 8000
    });
  }
}

/** Download an artifact through the browser (fetched with the server's auth headers). */
export async function downloadArtifact(api: PaiApi, workspace: string, path: string): Promise<void> {
  const blob = await api.readFile(workspace, path);
  const url = URL.createObjectURL(blob);
  const link = document.createElement('a');
  link.href = url;
  link.download = PathExt.basename(path);
  link.style.display = 'none';
  document.body.appendChild(link);
  link.click();
  document.body.removeChild(link);
  window.setTimeout(() => URL.revokeObjectURL(url), 30000);
}

/** Ask before something destructive; resolves true when the user confirmed. */
export async function confirm(
  trans: TranslationBundle,
  title: string,
  body: string,
  action: string
): Promise<boolean> {
  const result = await showDialog({
    title,
    body,
    buttons: [Dialog.cancelButton({ label: trans.__('Cancel') }), Dialog.warnButton({ label: action })]
  });
  return result.button.accept;
}
