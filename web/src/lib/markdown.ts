// Markdown rules for model answers: `[n]` markers that match a received citation become links to
// it (a remark plugin over text nodes, so code and existing links are left alone), and only
// http(s) links survive.

/** The slice of mdast this plugin touches. */
interface MdNode {
  type: string;
  value?: string;
  url?: string;
  children?: MdNode[];
  data?: { hProperties?: Record<string, string | number> };
}

export const CITE_PREFIX = "cite-";

/** The id of a citation's list item: `cite-{answerKey}-{index}`. */
export function citeId(answerKey: string, index: number): string {
  return `${CITE_PREFIX}${answerKey}-${index}`;
}

const MARKER = /\[(\d{1,4})\]/g;

// Nodes whose text must stay as it is: code, and anything already a link.
const OPAQUE = new Set(["code", "inlineCode", "link", "linkReference", "definition", "html"]);

function splitText(node: MdNode, answerKey: string, indices: ReadonlySet<number>): MdNode[] | null {
  const text = node.value ?? "";
  const out: MdNode[] = [];
  let last = 0;
  for (const match of text.matchAll(MARKER)) {
    const n = Number(match[1]);
    if (!indices.has(n)) continue;
    const at = match.index ?? 0;
    if (at > last) out.push({ type: "text", value: text.slice(last, at) });
    out.push({
      type: "link",
      url: `#${citeId(answerKey, n)}`,
      children: [{ type: "text", value: `[${n}]` }],
      data: { hProperties: { dataCite: n } },
    });
    last = at + match[0].length;
  }
  if (out.length === 0) return null;
  if (last < text.length) out.push({ type: "text", value: text.slice(last) });
  return out;
}

function walk(node: MdNode, answerKey: string, indices: ReadonlySet<number>): void {
  if (!node.children || OPAQUE.has(node.type)) return;
  const next: MdNode[] = [];
  for (const child of node.children) {
    const replaced = child.type === "text" ? splitText(child, answerKey, indices) : null;
    if (replaced) {
      next.push(...replaced);
    } else {
      walk(child, answerKey, indices);
      next.push(child);
    }
  }
  node.children = next;
}

export interface CitationOptions {
  answerKey: string;
  indices: ReadonlySet<number>;
}

/** remark plugin: link `[n]` markers to the answer's citations. */
export function remarkCitations(options: CitationOptions) {
  return (tree: MdNode): void => {
    if (options.indices.size > 0) walk(tree, options.answerKey, options.indices);
  };
}

export function isWebUrl(url: string): boolean {
  try {
    const { protocol } = new URL(url);
    return protocol === "http:" || protocol === "https:";
  } catch {
    return false;
  }
}

/**
 * react-markdown's urlTransform: keep http(s) URLs, and the in-page citation links the plugin
 * made (marked with a data-cite property); drop everything else (relative, javascript:, data:...).
 */
export function safeUrl(url: string, _key: string, node: { properties?: Record<string, unknown> }): string | null {
  if (url.startsWith(`#${CITE_PREFIX}`) && node.properties?.dataCite !== undefined) return url;
  return isWebUrl(url) ? url : null;
}
