/**
 * Settings and section names, kept free of Lab imports so they are cheap to test.
 */

export type Section = 'jobs' | 'artifacts' | 'models' | 'deployments';

export const SECTIONS: Section[] = ['jobs', 'artifacts', 'models', 'deployments'];

export interface IPaiSettings {
  defaultWorkspace: string;
  refreshInterval: number;
}

export const DEFAULT_SETTINGS: IPaiSettings = {
  defaultWorkspace: '',
  refreshInterval: 5
};

/** Settings as read from the registry, clamped to safe values. */
export function readSettings(raw: Partial<Record<string, unknown>>): IPaiSettings {
  const interval = Number(raw.refreshInterval);
  return {
    defaultWorkspace:
      typeof raw.defaultWorkspace === 'string' ? raw.defaultWorkspace.trim() : '',
    refreshInterval:
      Number.isFinite(interval) && interval > 0
        ? Math.min(Math.max(interval, 1), 3600)
        : DEFAULT_SETTINGS.refreshInterval
  };
}

/**
 * The workspace to select: the current one if still a member, else the configured
 * default if a member, else the first one; '' when the user has none.
 */
export function pickWorkspace(
  names: string[],
  current: string,
  preferred: string
): string {
  if (current && names.includes(current)) {
    return current;
  }
  if (preferred && names.includes(preferred)) {
    return preferred;
  }
  return names[0] ?? '';
}

