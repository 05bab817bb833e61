/**
 * Parameters: read the defaults from a notebook's `parameters`-tagged cell, and parse
 * what the user typed in the submit dialog.
 *
 * Papermill injects the job's parameters after the tagged cell, so the dialog only
 * needs to show the defaults as editable `NAME=VALUE` lines (VALUE in JSON, the same
 * format as `pai-lab job submit --param`). Python literals are converted to JSON;
 * expressions that are not literals (`lr = 1 / 3`) are reported, not guessed.
 */

export interface IParameterDefaults {
  /** name -> JSON value, in the cell's order. */
  values: Record<string, unknown>;
  /** Names assigned with an expression the dialog cannot represent as JSON. */
  skipped: string[];
}

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;

const PYTHON_KEYWORDS = new Set(
  (
    'False None True and as assert async await break class continue def del elif else ' +
    'except finally for from global if import in is lambda nonlocal not or pass raise ' +
    'return try while with yield'
  ).split(' ')
);

/** True when `name` is usable as a papermill parameter (a Python identifier). */
export function isParameterName(name: string): boolean {
  return IDENTIFIER.test(name) && !PYTHON_KEYWORDS.has(name);
}

class LiteralError extends Error {}

/**
 * Parse one Python literal (numbers, strings, True/False/None, lists, tuples, dicts)
 * into a JSON-compatible value. Throws when the text is anything else.
 */
export function parsePythonLiteral(text: string): unknown {
  let pos = 0;
  const src = text;

  const skipSpace = () => {
    while (pos < src.length && /\s/.test(src[pos])) {
      pos++;
    }
  };

  const parseString = (): string => {
    let prefix = '';
    while (/[rRbBuUfF]/.test(src[pos])) {
      prefix += src[pos++].toLowerCase();
    }
    if (prefix.includes('f') || prefix.includes('b')) {
      throw new LiteralError('f-strings and bytes are not literals');
    }
    const raw = prefix.includes('r');
    const quote = src.startsWith('"""', pos) || src.startsWith("'''", pos)
      ? src.substr(pos, 3)
      : src[pos];
    pos += quote.length;
    let out = '';
    for (;;) {
      if (pos >= src.length) {
        throw new LiteralError('unterminated string');
      }
      if (src.startsWith(quote, pos)) {
        pos += quote.length;
        return out;
      }
      const ch = src[pos++];
      if (ch === '\\' && !raw) {
        const next = src[pos++];
        const escapes: Record<string, string> = {
          n: '\n',
          t: '\t',
          r: '\r',
          '\\': '\\',
          "'": "'",
          '"': '"',
          '0': '\0'
        };
        if (next === 'u' || next === 'x') {
          const len = next === 'u' ? 4 : 2;
          out += String.fromCharCode(parseInt(src.substr(pos, len), 16));
          pos += len;
        } else {
          out += escapes[next] ?? `\\${next}`;
        }
      } else {
        out += ch;
      }
    }
  };

  const parseValue = (): unknown => {
    skipSpace();
    const ch = src[pos];
    if (ch === undefined) {
      throw new LiteralError('missing value');
    }
    if (ch === '[' || ch === '(') {
      const close = ch === '[' ? ']' : ')';
      pos++;
      const items: unknown[] = [];
      skipSpace();
      while (src[pos] !== close) {
        items.push(parseValue());
        skipSpace();
        if (src[pos] === ',') {
          pos++;
          skipSpace();
        } else if (src[pos] !== close) {
          throw new LiteralError('expected , or closing bracket');
        }
      }
      pos++;
      return items;
    }
    if (ch === '{') {
      pos++;
      const obj: Record<string, unknown> = {};
      skipSpace();
      while (src[pos] !== '}') {
        const key = parseValue();
        if (typeof key !== 'string' && typeof key !== 'number') {
          throw new LiteralError('dict keys must be strings or numbers');
        }
        skipSpace();
        if (src[pos] !== ':') {
          throw new LiteralError('expected :');
        }
        pos++;
        obj[String(key)] = parseValue();
        skipSpace();
        if (src[pos] === ',') {
          pos++;
          skipSpace();
        } else if (src[pos] !== '}') {
          throw new LiteralError('expected , or }');
        }
      }
      pos++;
      return obj;
    }
    if (/['"]/.test(ch) || /^[rRuU]['"]/.test(src.substr(pos, 2))) {
      return parseString();
    }
    const word = /^[A-Za-z_][A-Za-z0-9_]*/.exec(src.slice(pos));
    if (word) {
      pos += word[0].length;
      if (word[0] === 'True') {
        return true;
      }
      if (word[0] === 'False') {
        return false;
      }
      if (word[0] === 'None') {
        return null;
      }
      throw new LiteralError(`${word[0]} is not a literal`);
    }
    const num = /^[-+]?(\d[\d_]*\.?[\d_]*|\.\d[\d_]*)([eE][-+]?\d+)?/.exec(
      src.slice(pos)
    );
    if (num) {
      pos += num[0].length;
      const value = Number(num[0].replace(/_/g, ''));
      if (!Number.isFinite(value)) {
        throw new LiteralError('not a finite number');
      }
      return value;
    }
    throw new LiteralError(`unexpected ${JSON.stringify(ch)}`);
  };

  const value = parseValue();
  skipSpace();
  if (pos !== src.length) {
    throw new LiteralError('trailing characters');
  }
  return value;
}

/** The characters of `text` outside string literals, with their positions. */
function* unquoted(text: string): Generator<[number, string]> {
  let quote: string | null = null;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (quote) {
      if (ch === '\\') {
        i++;
      } else if (ch === quote) {
        quote = null;
      }
    } else if (ch === '"' || ch === "'") {
      quote = ch;
    } else {
      yield [i, ch];
    }
  }
}

/** Drop a trailing `# comment` that is not inside a string. */
function stripComment(line: string): string {
  for (const [i, ch] of unquoted(line)) {
    if (ch === '#') {
      return line.slice(0, i);
    }
  }
  return line;
}

function bracketDepth(text: string): number {
  let depth = 0;
  for (const [, ch] of unquoted(text)) {
    if ('([{'.includes(ch)) {
      depth++;
    } else if (')]}'.includes(ch)) {
      depth--;
    }
  }
  return depth;
}

/**
 * The defaults assigned in a `parameters` cell's source.
 *
 * Handles `name = literal`, annotated `name: float = 0.5`, trailing comments and
 * literals spanning several lines (open brackets). Anything else is skipped.
 */
export function parseParametersCell(source: string): IParameterDefaults {
  const values: Record<string, unknown> = {};
  const skipped: string[] = [];
  const lines = source.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    let statement = stripComment(lines[i]);
    if (/^\s/.test(lines[i]) || !statement.trim()) {
      continue;
    }
    while (bracketDepth(statement) > 0 && i + 1 < lines.length) {
      statement += '\n' + stripComment(lines[++i]);
    }
    const match = /^([A-Za-z_][A-Za-z0-9_]*)\s*(?::[^=]*)?=(?!=)([\s\S]*)$/.exec(
      statement.trim()
    );
    if (!match) {
      continue;
    }
    const [, name, rhs] = match;
    try {
      values[name] = parsePythonLiteral(rhs.trim());
      const at = skipped.indexOf(name);
      if (at >= 0) {
        skipped.splice(at, 1);
      }
    } catch {
      delete values[name];
      if (!skipped.includes(name)) {
        skipped.push(name);
      }
    }
  }
  return { values, skipped };
}

/** Minimal shape of a notebook cell (nbformat JSON or a Lab cell model's JSON). */
export interface ICellLike {
  cell_type: string;
  source: string | string[];
  metadata?: { tags?: string[]; [key: string]: unknown };
}

/** The source of the first code cell tagged `parameters`, or `null`. */
export function findParametersCell(cells: ICellLike[]): string | null {
  for (const cell of cells) {
    const tags = cell.metadata?.tags;
    if (cell.cell_type === 'code' && Array.isArray(tags) && tags.includes('parameters')) {
      return Array.isArray(cell.source) ? cell.source.join('') : cell.source;
    }
  }
  return null;
}

/** Format parameters as the dialog's editable text: one `NAME=JSON` per line. */
export function formatParameters(values: Record<string, unknown>): string {
  return Object.entries(values)
    .map(([name, value]) => `${name}=${JSON.stringify(value)}`)
    .join('\n');
}

export class ParameterError extends Error {}

/**
 * Parse the dialog's `NAME=VALUE` lines. VALUE is JSON when it parses as JSON, else
 * a string (like the CLI's `--param`). Blank lines and `#` comments are ignored.
 * Throws `ParameterError` naming the line that is wrong.
 */
export function parseParameterLines(text: string): Record<string, unknown> {
  const result: Record<string, unknown> = {};
  text.split(/\r?\n/).forEach((line, index) => {
    const trimmed = line.trim();
    if (!trimmed || trimmed.startsWith('#')) {
      return;
    }
    const eq = trimmed.indexOf('=');
    if (eq < 0) {
      throw new ParameterError(
        `Line ${index + 1}: "${trimmed}" is not NAME=VALUE.`
      );
    }
    const name = trimmed.slice(0, eq).trim();
    if (!isParameterName(name)) {
      throw new ParameterError(
        `Line ${index + 1}: "${name}" is not a valid Python identifier.`
      );
    }
    const raw = trimmed.slice(eq + 1).trim();
    let value: unknown;
    try {
      value = JSON.parse(raw);
    } catch {
      value = raw;
    }
    result[name] = value;
  });
  return result;
}

/** Parse a comma/newline separated list of output paths (relative, no `..`). */
export function parseOutputs(text: string): string[] {
  const outputs = text
    .split(/[\n,]/)
    .map(item => item.trim())
    .filter(item => item);
  for (const output of outputs) {
    if (output.startsWith('/') || output.split('/').includes('..')) {
      throw new ParameterError(
        `Output "${output}" must be a path relative to the notebook's folder.`
      );
    }
  }
  return outputs;
}

/**
 * Parse a max runtime: seconds, or a number with a unit (`90s`, `30m`, `2h`, `1d`).
 * '' means no limit (null). Mirrors the control plane's `parse_duration`.
 */
export function parseDuration(text: string): number | null {
  const trimmed = text.trim();
  if (!trimmed) {
    return null;
  }
  const match = /^(\d+(?:\.\d+)?)\s*([smhd]?)$/i.exec(trimmed);
  if (!match) {
    throw new ParameterError(
      `Max runtime "${trimmed}" is not a duration (use seconds, or e.g. 90s, 30m, 2h).`
    );
  }
  const units: Record<string, number> = { '': 1, s: 1, m: 60, h: 3600, d: 86400 };
  const seconds = Math.round(Number(match[1]) * units[match[2].toLowerCase()]);
  if (seconds <= 0) {
    throw new ParameterError('Max runtime must be positive.');
  }
  return seconds;
}
