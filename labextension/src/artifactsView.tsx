/**
 * The Artifacts section: a file browser over the workspace's object store, with
 * breadcrumbs, download, drag-and-drop upload with progress, delete with confirmation,
 * "copy pai:// path", and opening notebooks/CSVs/images in Lab.
 */
import * as React from 'react';

import { Clipboard, Notification } from '@jupyterlab/apputils';
import {
  copyIcon,
  deleteIcon,
  downloadIcon,
  fileIcon,
  fileUploadIcon,
  folderIcon,
  imageIcon,
  launchIcon,
  notebookIcon,
  refreshIcon,
  spreadsheetIcon
} from '@jupyterlab/ui-components';

import { confirm, downloadArtifact, IPaiContext, openArtifact } from './actions';
import { errorMessage } from './api';
import { Empty, ErrorBox, IconButton, Loading, useSignal } from './components';
import { breadcrumbs, fileKind, formatSize, formatTime, formatTimestamp, sortEntries } from './format';
import { IFileEntry } from './types';
import { joinPath, paiUri } from './urls';

interface IUpload {
  name: string;
  loaded: number;
  total: number;
  error?: string;
}

function iconFor(entry: IFileEntry) {
  if (entry.type === 'directory') {
    return folderIcon;
  }
  switch (fileKind(entry.name)) {
    case 'notebook':
      return notebookIcon;
    case 'csv':
      return spreadsheetIcon;
    case 'image':
      return imageIcon;
    default:
      return fileIcon;
  }
}

export function ArtifactsView(props: { ctx: IPaiContext }) {
  const { ctx } = props;
  const { model } = ctx;
  const { api, trans } = model;
  const workspace = model.workspace;
  const [path, setPath] = React.useState(() => model.takeTarget('artifacts') ?? '');
  const [entries, setEntries] = React.useState<IFileEntry[] | null>(null);
  const [error, setError] = React.useState('');
  const [uploads, setUploads] = React.useState<IUpload[]>([]);
  const [dragging, setDragging] = React.useState(false);
  const fileInput = React.useRef<HTMLInputElement>(null);
  const request = React.useRef(0);

  const load = React.useCallback(
    async (target: string) => {
      if (!workspace) {
        return;
      }
      const mark = ++request.current;
      setEntries(null);
      try {
        const listed = await api.listFiles(workspace, target);
        if (mark === request.current) {
          setEntries(sortEntries(listed));
          setError('');
        }
      } catch (err) {
        if (mark === request.current) {
          setEntries([]);
          setError(errorMessage(err));
        }
      }
    },
    [api, workspace]
  );

  React.useEffect(() => {
    void load(path);
  }, [load, path]);
  useSignal(model.navigate, ({ section }) => {
    const target = section === 'artifacts' ? model.takeTarget('artifacts') : undefined;
    if (target !== undefined) {
      setPath(target);
    }
  });

  const uploadFiles = async (files: File[]) => {
    const folder = path;
    const started: IUpload[] = files.map(file => ({ name: file.name, loaded: 0, total: file.size }));
    setUploads(current => [...current, ...started]);
    await Promise.all(
      files.map(async (file, index) => {
        const item = started[index];
        const update = (patch: Partial<IUpload>) => {
          Object.assign(item, patch);
          setUploads(current => [...current]);
        };
        try {
          await api.upload(workspace, joinPath(folder, file.name), file, (loaded, total) =>
            update({ loaded, total })
          ).done;
          setUploads(current => current.filter(u => u !== item));
        } catch (err) {
          update({ error: errorMessage(err) });
        }
      })
    );
    if (folder === path) {
      void load(folder);
    }
  };

  const remove = async (entry: IFileEntry) => {
    const folder = entry.type === 'directory';
    const ok = await confirm(
      trans,
      folder ? trans.__('Delete folder?') : trans.__('Delete file?'),
      folder
        ? trans.__('Delete %1 and everything in it from the workspace store? This cannot be undone.', entry.path)
        : trans.__('Delete %1 from the workspace store? This cannot be undone.', entry.path),
      trans.__('Delete')
    );
    if (!ok) {
      return;
    }
    try {
      await api.deleteFile(workspace, entry.path, folder);
      void load(path);
    } catch (err) {
      setError(trans.__('Could not delete %1: %2', entry.path, errorMessage(err)));
    }
  };

  const download = async (entry: IFileEntry) => {
    try {
      await downloadArtifact(api, workspace, entry.path);
    } catch (err) {
      setError(trans.__('Could not download %1: %2', entry.path, errorMessage(err)));
    }
  };

  const activate = (entry: IFileEntry) => {
    if (entry.type === 'directory') {
      setPath(entry.path);
    } else if (fileKind(entry.name) !== 'other') {
      void openArtifact(ctx, workspace, entry.path);
    } else {
      void download(entry);
    }
  };

  if (!workspace) {
    return <Empty>{trans.__('Select a workspace to browse its artifacts.')}</Empty>;
  }

  return (
    <div
      className={`pai-Section pai-Artifacts ${dragging ? 'pai-mod-dragging' : ''}`}
      onDragOver={event => {
        if (event.dataTransfer.types.includes('Files')) {
          event.preventDefault();
          event.dataTransfer.dropEffect = 'copy';
          setDragging(true);
        }
      }}
      onDragLeave={event => {
        if (!event.currentTarget.contains(event.relatedTarget as Node)) {
          setDragging(false);
        }
      }}
      onDrop={event => {
        event.preventDefault();
        setDragging(false);
        const files = Array.from(event.dataTransfer.files);
        if (files.length) {
          void uploadFiles(files);
        }
      }}
    >
      <div className="pai-Toolbar">
        <nav className="pai-Breadcrumbs" aria-label={trans.__('Folder')}>
          {breadcrumbs(path, workspace).map((crumb, index, all) => (
            <React.Fragment key={crumb.path}>
              {index > 0 && <span className="pai-Breadcrumbs-sep">/</span>}
              {index === all.length - 1 ? (
                <span className="pai-Breadcrumbs-current" aria-current="page">
                  {crumb.label}
                </span>
              ) : (
                <button className="pai-Breadcrumbs-link" onClick={() => setPath(crumb.path)}>
                  {crumb.label}
                </button>
              )}
            </React.Fragment>
          ))}
        </nav>
        <span className="pai-Spacer" />
        <IconButton icon={fileUploadIcon} label={trans.__('Upload files')} onClick={() => fileInput.current?.click()} />
        <IconButton icon={refreshIcon} label={trans.__('Refresh')} onClick={() => void load(path)} />
        <input
          ref={fileInput}
          type="file"
          multiple
          hidden
          className="pai-UploadInput"
          onChange={event => {
            const files = Array.from(event.target.files ?? []);
            event.target.value = '';
            if (files.length) {
              void uploadFiles(files);
            }
          }}
        />
      </div>
      <ErrorBox message={error} onRetry={() => void load(path)} retryLabel={trans.__('Retry')} />
      {uploads.length > 0 && (
        <ul className="pai-Uploads" aria-label={trans.__('Uploads')}>
          {uploads.map((upload, index) => (
            <li key={index} className={upload.error ? 'pai-mod-error' : ''}>
              <span className="pai-Uploads-name">{upload.name}</span>
              {upload.error ? (
                <span className="pai-Uploads-error">
                  {upload.error}{' '}
                  <button onClick={() => setUploads(current => current.filter(u => u !== upload))}>
                    {trans.__('Dismiss')}
                  </button>
                </span>
              ) : (
                <progress max={upload.total || 1} value={upload.loaded} aria-label={trans.__('Uploading %1', upload.name)} />
              )}
            </li>
          ))}
        </ul>
      )}
      {entries === null && !error && <Loading label={trans.__('Loading…')} />}
      {entries !== null && entries.length === 0 && !error && (
        <Empty>
          {path
            ? trans.__('This folder is empty. Drop files here to upload them.')
            : trans.__('No artifacts yet. Job outputs appear under jobs/; drop files here to upload datasets.')}
        </Empty>
      )}
      {entries && entries.length > 0 && (
        <table className="pai-FileTable" aria-label={trans.__('Artifacts')}>
          <thead>
            <tr>
              <th scope="col">{trans.__('Name')}</th>
              <th scope="col" className="pai-FileTable-size">
                {trans.__('Size')}
              </th>
              <th scope="col" className="pai-FileTable-modified">
                {trans.__('Modified')}
              </th>
              <th scope="col" className="pai-FileTable-actions">
                <span className="pai-VisuallyHidden">{trans.__('Actions')}</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {entries.map(entry => {
              const Icon = iconFor(entry);
              return (
                <tr
                  key={entry.path}
                  className="pai-FileRow"
                  data-path={entry.path}
                  data-type={entry.type}
                  tabIndex={0}
                  onDoubleClick={() => activate(entry)}
                  onKeyDown={event => {
                    if (event.key === 'Enter') {
                      activate(entry);
                    } else if (event.key === 'Delete') {
                      void remove(entry);
                    }
                  }}
                >
                  <td className="pai-FileTable-name">
                    <button
                      className="pai-FileName"
                      onClick={() => activate(entry)}
                      title={entry.type === 'directory' ? trans.__('Open folder') : trans.__('Open %1', entry.name)}
                    >
                      <Icon.react tag="span" className="pai-FileIcon" />
                      <span>{entry.name}</span>
                    </button>
                  </td>
                  <td className="pai-FileTable-size">{entry.type === 'file' ? formatSize(entry.size) : ''}</td>
                  <td className="pai-FileTable-modified" title={formatTimestamp(entry.modified)}>
                    {formatTime(entry.modified)}
                  </td>
                  <td className="pai-FileTable-actions">
                    {entry.type === 'file' && fileKind(entry.name) !== 'other' && (
                      <IconButton
                        icon={launchIcon}
                        label={trans.__('Open %1 in JupyterLab', entry.name)}
                        onClick={() => void openArtifact(ctx, workspace, entry.path)}
                      />
                    )}
                    {entry.type === 'file' && (
                      <IconButton
                        icon={downloadIcon}
                        label={trans.__('Download %1', entry.name)}
                        className="pai-Download"
                        onClick={() => void download(entry)}
                      />
                    )}
                    <IconButton
                      icon={copyIcon}
                      label={trans.__('Copy pai:// path of %1', entry.name)}
                      onClick={() => {
                        Clipboard.copyToSystem(paiUri(entry.path));
                        Notification.info(trans.__('Copied %1', paiUri(entry.path)), { autoClose: 3000 });
                      }}
                    />
                    <IconButton
                      icon={deleteIcon}
                      label={trans.__('Delete %1', entry.name)}
                      onClick={() => void remove(entry)}
                    />
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
    </div>
  );
}
