"use client";
// A model answer as Markdown: GFM, no raw HTML (it shows as text), only http(s) links, which
// open in a new tab without a referrer, and `[n]` markers linked to the answer's citations.
import { useMemo, type ComponentPropsWithoutRef } from "react";
import ReactMarkdown, { type Components, type ExtraProps, type Options } from "react-markdown";
import remarkGfm from "remark-gfm";

import { remarkCitations, safeUrl } from "@/lib/markdown";

type AnchorProps = ComponentPropsWithoutRef<"a"> & ExtraProps;
type ImageProps = ComponentPropsWithoutRef<"img"> & ExtraProps;

function Anchor({ href, children, node }: AnchorProps) {
  if (href && node?.properties?.dataCite !== undefined) {
    return (
      <a data-testid="cite-link" className="cite-link" href={href}>
        {children}
      </a>
    );
  }
  if (!href) return <span className="dead-link">{children}</span>;
  return (
    <a href={href} target="_blank" rel="noopener noreferrer nofollow">
      {children}
    </a>
  );
}

// Images would fetch from wherever the model points: show their description instead.
function Image({ alt }: ImageProps) {
  return <span className="image-alt">{alt ? `[image: ${alt}]` : "[image]"}</span>;
}

const components: Components = { a: Anchor, img: Image };

export interface MarkdownProps {
  text: string;
  answerKey: string;
  citationIndices: readonly number[];
}

export function Markdown({ text, answerKey, citationIndices }: MarkdownProps) {
  const indicesKey = citationIndices.join(",");
  const remarkPlugins = useMemo<NonNullable<Options["remarkPlugins"]>>(
    () => [remarkGfm, [remarkCitations, { answerKey, indices: new Set(indicesKey ? indicesKey.split(",").map(Number) : []) }]],
    [answerKey, indicesKey],
  );
  return (
    <ReactMarkdown remarkPlugins={remarkPlugins} components={components} urlTransform={safeUrl}>
      {text}
    </ReactMarkdown>
  );
}
