/**
 * pai-lab JupyterLab extension: the PAI sidebar, the notebook toolbar button
 * "Submit as job", palette commands and settings.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, ToolbarButton } from '@jupyterlab/apputils';
import { IDocumentManager } from '@jupyterlab/docmanager';
import { DocumentRegistry } from '@jupyterlab/docregistry';
import { INotebookModel, INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { ITranslator, nullTranslator } from '@jupyterlab/translation';
import { DisposableDelegate, IDisposable } from '@lumino/disposable';

import { IPaiContext } from './actions';
import { PaiApi } from './api';
import { paiIcon } from './icons';
import { PaiModel, readSettings, Section } from './model';
import { PaiSidebar } from './panel';
import { submitNotebook } from './submit';

const PLUGIN_ID = 'pai-lab:plugin';

namespace CommandIDs {
  export const open = 'pai-lab:open';
  export const submit = 'pai-lab:submit-notebook';
  export const showSection = 'pai-lab:show-section';
  export const refresh = 'pai-lab:refresh';
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'PAI sidebar: submit notebooks as jobs, watch them, browse artifacts, models and deployments.',
  autoStart: true,
  optional: [
    ISettingRegistry,
    ICommandPalette,
    INotebookTracker,
    ITranslator,
    ILayoutRestorer,
    IDocumentManager
  ],
  activate: (
    app: JupyterFrontEnd,
    settingRegistry: ISettingRegistry | null,
    palette: ICommandPalette | null,
    tracker: INotebookTracker | null,
    translator: ITranslator | null,
    restorer: ILayoutRestorer | null,
    docManager: IDocumentManager | null
  ) => {
    const trans = (translator ?? nullTranslator).load('pai_lab');
    const api = new PaiApi(app.serviceManager.serverSettings);
    const model = new PaiModel(api, trans);
    const ctx: IPaiContext = {
      model,
      contents: app.serviceManager.contents,
      open: path => {
        if (docManager) {
          docManager.openOrReveal(path);
        } else {
          void app.commands.execute('docmanager:open', { path });
        }
      }
    };

    const sidebar = new PaiSidebar(ctx);
    sidebar.title.caption = trans.__('PAI');
    app.shell.add(sidebar, 'left', { rank: 650 });
    if (restorer) {
      restorer.add(sidebar, 'pai-lab-sidebar');
    }
    void model.refresh();

    const reveal = (section?: Section, target?: string) => {
      app.shell.activateById(sidebar.id);
      if (section) {
        model.show(section, target);
      }
    };

    app.commands.addCommand(CommandIDs.open, {
      label: trans.__('Open PAI Sidebar'),
      caption: trans.__('Show the PAI jobs, artifacts, models and deployments'),
      icon: paiIcon,
      execute: () => reveal()
    });

    const sectionLabels: Record<Section, string> = {
      jobs: trans.__('Show PAI Jobs'),
      artifacts: trans.__('Show PAI Artifacts'),
      models: trans.__('Show PAI Models'),
      deployments: trans.__('Show PAI Deployments')
    };
    app.commands.addCommand(CommandIDs.showSection, {
      label: args => sectionLabels[(args.section as Section) ?? 'jobs'] ?? trans.__('Show PAI'),
      execute: args => reveal((args.section as Section) ?? 'jobs', args.target as string | undefined)
    });

    app.commands.addCommand(CommandIDs.refresh, {
      label: trans.__('Reload PAI Workspaces'),
      execute: () => model.refresh()
    });

    const currentNotebook = (args: Record<string, unknown>): NotebookPanel | null => {
      const widget = tracker?.currentWidget ?? null;
      if (args.path && tracker) {
        return tracker.find(panel => panel.context.path === args.path) ?? widget;
      }
      return widget;
    };

    app.commands.addCommand(CommandIDs.submit, {
      label: trans.__('Submit Notebook as PAI Job'),
      caption: trans.__('Run this notebook (with unsaved edits) as a training job'),
      icon: args => (args.toolbar ? paiIcon : undefined),
      isEnabled: () => !!tracker?.currentWidget,
      execute: async args => {
        const panel = currentNotebook(args as Record<string, unknown>);
        if (!panel) {
          return null;
        }
        return submitNotebook(model, panel, job => reveal('jobs', job.id));
      }
    });

    if (palette) {
      const category = trans.__('PAI');
      palette.addItem({ command: CommandIDs.open, category });
      palette.addItem({ command: CommandIDs.submit, category });
      palette.addItem({ command: CommandIDs.refresh, category });
      for (const section of ['jobs', 'artifacts', 'models', 'deployments']) {
        palette.addItem({ command: CommandIDs.showSection, category, args: { section } });
      }
    }

    if (tracker) {
      tracker.currentChanged.connect(() => app.commands.notifyCommandChanged(CommandIDs.submit));
    }

    app.docRegistry.addWidgetExtension('Notebook', new SubmitButtonExtension(app, trans.__('Submit as job')));

    if (settingRegistry) {
      void settingRegistry
        .load(PLUGIN_ID)
        .then(settings => {
          const apply = () => {
            model.settings = readSettings(settings.composite as Record<string, unknown>);
          };
          apply();
          settings.changed.connect(apply);
        })
        .catch(reason => {
          console.error('pai-lab: failed to load settings.', reason);
        });
    }
  }
};

/** Adds the "Submit as job" button to every notebook's toolbar. */
class SubmitButtonExtension implements DocumentRegistry.IWidgetExtension<NotebookPanel, INotebookModel> {
  constructor(
    private readonly app: JupyterFrontEnd,
    private readonly label: string
  ) {}

  createNew(panel: NotebookPanel): IDisposable {
    const button = new ToolbarButton({
      className: 'pai-SubmitButton',
      icon: paiIcon,
      label: this.label,
      tooltip: this.label,
      onClick: () => {
        void this.app.commands.execute(CommandIDs.submit, { path: panel.context.path });
      }
    });
    if (!panel.toolbar.insertAfter('cellType', 'paiSubmit', button)) {
      panel.toolbar.addItem('paiSubmit', button);
    }
    return new DisposableDelegate(() => button.dispose());
  }
}

export default plugin;
