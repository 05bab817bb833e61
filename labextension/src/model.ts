/**
 * The sidebar's shared state: who the user is, which workspace is selected, which
 * section is shown, and the settings. Widgets read it and listen to `changed`; the
 * commands (submit, open job) go through it so the panel and the toolbar button agree.
 */
import { TranslationBundle } from '@jupyterlab/translation';
import { ISignal, Signal } from '@lumino/signaling';

import { errorMessage, PaiApi } from './api';
import {
  DEFAULT_SETTINGS,
  IPaiSettings,
  pickWorkspace,
  readSettings,
  Section,
  SECTIONS
} from './settings';
import { IMe, IProfile } from './types';

export { DEFAULT_SETTINGS, pickWorkspace, readSettings, SECTIONS };
export type { IPaiSettings, Section };

export class PaiModel {
  constructor(
    readonly api: PaiApi,
    readonly trans: TranslationBundle
  ) {}

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Ask a view to show something (a job, a folder of artifacts, a model). */
  get navigate(): ISignal<this, { section: Section; target?: string }> {
    return this._navigate;
  }

  /** Emitted when a job was submitted or changed by an action, so lists refresh now. */
  get jobsTouched(): ISignal<this, string> {
    return this._jobsTouched;
  }

  get me(): IMe | null {
    return this._me;
  }

  get workspace(): string {
    return this._workspace;
  }

  set workspace(name: string) {
    if (name !== this._workspace) {
      this._workspace = name;
      this._changed.emit();
    }
  }

  get workspaces(): string[] {
    return (this._me?.workspaces ?? []).map(ws => ws.name);
  }

  /** The current user's role in the selected workspace, if the control plane said. */
  get role(): string {
    return this._me?.workspaces.find(ws => ws.name === this._workspace)?.role ?? '';
  }

  get section(): Section {
    return this._section;
  }

  set section(section: Section) {
    if (section !== this._section) {
      this._section = section;
      this._changed.emit();
    }
  }

  get settings(): IPaiSettings {
    return this._settings;
  }

  set settings(settings: IPaiSettings) {
    this._settings = settings;
    if (!this._workspace && this._me) {
      this._workspace = pickWorkspace(this.workspaces, '', settings.defaultWorkspace);
    }
    this._changed.emit();
  }

  /** Why the panel cannot show anything ('' when fine). */
  get error(): string {
    return this._error;
  }

  get loading(): boolean {
    return this._loading;
  }

  /** (Re)load identity and workspaces; errors end up in `error`, never thrown. */
  async refresh(): Promise<void> {
    this._loading = true;
    this._changed.emit();
    try {
      this._me = await this.api.me();
      this._error = '';
      this._workspace = pickWorkspace(
        this.workspaces,
        this._workspace,
        this._settings.defaultWorkspace
      );
    } catch (error) {
      this._error = errorMessage(error);
    } finally {
      this._loading = false;
      this._changed.emit();
    }
  }

  /** Profiles on offer, fetched once and cached. */
  async profiles(): Promise<IProfile[]> {
    if (!this._profiles) {
      this._profiles = this.api.profiles().catch(error => {
        this._profiles = null;
        throw error;
      });
    }
    return this._profiles;
  }

  /**
   * Show a section, optionally at a target (a job id, a folder, a model name). The
   * target is also kept until the section's view takes it, because a view that is not
   * mounted yet cannot hear the `navigate` signal.
   */
  show(section: Section, target?: string): void {
    if (target !== undefined) {
      this._targets[section] = target;
    }
    this.section = section;
    this._navigate.emit({ section, target });
  }

  /** The pending target of a section, once (see `show`). */
  takeTarget(section: Section): string | undefined {
    const target = this._targets[section];
    delete this._targets[section];
    return target;
  }

  touchJobs(id: string): void {
    this._jobsTouched.emit(id);
  }

  private _me: IMe | null = null;
  private _workspace = '';
  private _section: Section = 'jobs';
  private _settings: IPaiSettings = { ...DEFAULT_SETTINGS };
  private _error = '';
  private _loading = false;
  private _profiles: Promise<IProfile[]> | null = null;
  private _targets: Partial<Record<Section, string>> = {};
  private _changed = new Signal<this, void>(this);
  private _navigate = new Signal<this, { section: Section; target?: string }>(this);
  private _jobsTouched = new Signal<this, string>(this);
}
