/**
 * Shapes of the control-plane JSON documents the extension reads.
 *
 * Only the fields the UI uses are typed; everything else passes through untouched so
 * a newer control plane never breaks an older extension.
 */

export type JobState =
  | 'queued'
  | 'starting'
  | 'running'
  | 'succeeded'
  | 'failed'
  | 'cancelled'
  | 'timed_out'
  | 'lost';

export interface IMetricPoint {
  name: string;
  value: number;
  step?: number | null;
  time?: string | number | null;
}

export interface IJobSpec {
  name?: string;
  workspace?: string;
  source?: { notebook?: string; script?: string; command?: string[] };
  parameters?: Record<string, unknown>;
  profile?: string;
  resources?: Record<string, unknown>;
  workers?: number;
  max_runtime?: number | null;
  retries?: number;
  env?: Record<string, string>;
  outputs?: string[];
  [key: string]: unknown;
}

export interface IJob {
  id: string;
  workspace: string;
  owner: string;
  name?: string;
  state: JobState | string;
  attempt?: number;
  spec: IJobSpec;
  created_at?: string | null;
  started_at?: string | null;
  finished_at?: string | null;
  exit_reason?: string | null;
  wait_reason?: string | null;
  metrics?: IMetricPoint[];
  environment?: Record<string, unknown>;
  links?: Record<string, string>;
  [key: string]: unknown;
}

export interface IJobList {
  jobs: IJob[];
  total: number;
}

export interface IWorkspaceRole {
  name: string;
  role?: string;
  description?: string;
}

export interface IMe {
  name: string;
  admin?: boolean;
  workspaces: IWorkspaceRole[];
  [key: string]: unknown;
}

export interface IProfile {
  slug: string;
  display_name: string;
  description?: string;
  gpu?: number;
  default?: boolean;
  available?: boolean;
  unavailable_reason?: string | null;
  [key: string]: unknown;
}

export interface IFileEntry {
  name: string;
  path: string;
  type: 'file' | 'directory';
  size?: number | null;
  modified?: string | number | null;
}

export interface IModelVersion {
  version: number | string;
  artifact_uri?: string;
  framework?: string;
  metrics?: Record<string, number>;
  source_job?: string | null;
  created_at?: string;
  tags?: Record<string, string> | string[];
  [key: string]: unknown;
}

export interface IModel {
  name: string;
  description?: string;
  gate?: string | null;
  aliases?: Record<string, number | string>;
  latest_version?: number | string | null;
  versions?: IModelVersion[];
  [key: string]: unknown;
}

export interface IDeploymentVariant {
  name?: string;
  model?: string;
  version?: number | string;
  replicas?: number;
  weight?: number;
  shadow?: boolean;
  [key: string]: unknown;
}

export interface IDeployment {
  name: string;
  state?: string;
  url?: string | null;
  endpoint?: string | null;
  token?: string | null;
  model?: string;
  variants?: IDeploymentVariant[];
  [key: string]: unknown;
}

/** The body of `POST pai/api/notebook-jobs`. */
export interface INotebookJobRequest {
  path: string;
  content?: unknown;
  files?: string[];
  workspace: string;
  name?: string;
  parameters?: Record<string, unknown>;
  profile?: string;
  workers?: number;
  max_runtime?: number | null;
  outputs?: string[];
  retries?: number;
  env?: Record<string, string>;
}
