/**
 * A small form dialog built on Lab's `showDialog`: labelled inputs, selects and text
 * areas, keyboard accessible, validated on accept (the dialog re-opens with the user's
 * values and the error message when validation fails, so nothing typed is lost).
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { TranslationBundle } from '@jupyterlab/translation';
import { Widget } from '@lumino/widgets';

export interface IFormField {
  name: string;
  label: string;
  value?: string;
  kind?: 'text' | 'number' | 'select' | 'textarea';
  options?: { value: string; label: string }[];
  placeholder?: string;
  help?: string;
  min?: number;
  /** Consecutive inline fields share one row (short numbers and durations). */
  inline?: boolean;
}

export type FormValues = Record<string, string>;

class FormBody extends Widget implements Dialog.IBodyWidget<FormValues> {
  constructor(fields: IFormField[], values: FormValues, error: string, intro: string) {
    super({ node: document.createElement('form') });
    this.addClass('pai-Form');
    this.node.addEventListener('submit', event => event.preventDefault());
    if (intro) {
      const p = document.createElement('p');
      p.className = 'pai-Form-intro';
      p.textContent = intro;
      this.node.appendChild(p);
    }
    if (error) {
      const box = document.createElement('div');
      box.className = 'pai-Error';
      box.setAttribute('role', 'alert');
      box.textContent = error;
      this.node.appendChild(box);
    }
    let group: HTMLElement | null = null;
    for (const field of fields) {
      const id = `pai-field-${field.name}-${Math.random().toString(36).slice(2, 8)}`;
      const row = document.createElement('div');
      row.className = 'pai-Form-row';
      if (field.inline) {
        if (!group) {
          group = document.createElement('div');
          group.className = 'pai-Form-inline';
          this.node.appendChild(group);
        }
      } else {
        group = null;
      }
      const label = document.createElement('label');
      label.htmlFor = id;
      label.textContent = field.label;
      row.appendChild(label);
      let input: HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement;
      if (field.kind === 'select') {
        const select = document.createElement('select');
        select.className = 'jp-mod-styled';
        for (const option of field.options ?? []) {
          const el = document.createElement('option');
          el.value = option.value;
          el.textContent = option.label;
          select.appendChild(el);
        }
        input = select;
      } else if (field.kind === 'textarea') {
        const area = document.createElement('textarea');
        area.rows = 4;
        area.className = 'jp-mod-styled';
        input = area;
      } else {
        const el = document.createElement('input');
        el.className = 'jp-mod-styled';
        el.type = field.kind === 'number' ? 'number' : 'text';
        if (field.min !== undefined) {
          el.min = String(field.min);
        }
        input = el;
      }
      input.id = id;
      input.name = field.name;
      if (field.placeholder && !(input instanceof HTMLSelectElement)) {
        input.placeholder = field.placeholder;
      }
      input.value = values[field.name] ?? field.value ?? '';
      row.appendChild(input);
      if (field.help) {
        const help = document.createElement('div');
        help.className = 'pai-Form-help';
        help.textContent = field.help;
        row.appendChild(help);
      }
      (group ?? this.node).appendChild(row);
      this._inputs.push(input);
    }
  }

  getValue(): FormValues {
    const values: FormValues = {};
    for (const input of this._inputs) {
      values[input.name] = input.value;
    }
    return values;
  }

  protected onAfterAttach(): void {
    this._inputs[0]?.focus({ preventScroll: true });
    if (this.node.parentElement) {
      this.node.parentElement.scrollTop = 0;
    }
  }

  private _inputs: (HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement)[] = [];
}

/**
 * Show a form; resolve with the validated result, or null when cancelled.
 * `validate` throws an Error whose message is shown in the re-opened form.
 */
export async function formDialog<T>(options: {
  title: string;
  fields: IFormField[];
  accept: string;
  trans: TranslationBundle;
  intro?: string;
  validate: (values: FormValues) => T | Promise<T>;
}): Promise<T | null> {
  let values: FormValues = {};
  let error = '';
  for (;;) {
    const result = await showDialog<FormValues>({
      title: options.title,
      body: new FormBody(options.fields, values, error, options.intro ?? ''),
      buttons: [
        Dialog.cancelButton({ label: options.trans.__('Cancel') }),
        Dialog.okButton({ label: options.accept })
      ],
      focusNodeSelector: 'input, select, textarea'
    });
    if (!result.button.accept || !result.value) {
      return null;
    }
    values = result.value;
    try {
      return await options.validate(values);
    } catch (err) {
      error = (err as Error)?.message || String(err);
    }
  }
}
