// Model output -> safe DOM. The text is untrusted: raw HTML in it is shown as text
// (never parsed), the markdown's own HTML goes through DOMPurify, and the page's CSP
// would still refuse any script that slipped through.

import { Marked } from './vendor/marked.esm.js';
import DOMPurify from './vendor/purify.es.mjs';
import hljs from './vendor/highlight.min.js';

const ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

export function escapeHTML(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

const marked = new Marked({
  gfm: true,
  breaks: true,
  renderer: {
    // `<img onerror=...>` or `<script>` in the answer is text the model wrote: show it.
    html({ text, block }) {
      const shown = escapeHTML(text);
      return block ? `<p>${shown}</p>` : shown;
    },
  },
});

DOMPurify.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A') {
    node.setAttribute('target', '_blank');
    node.setAttribute('rel', 'noopener noreferrer');
  }
});

const PURIFY = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ['style', 'form', 'input', 'button', 'textarea', 'select', 'iframe'],
  FORBID_ATTR: ['style'],
  RETURN_DOM_FRAGMENT: true,
};

/** A sanitised fragment for `markdown`. */
export function renderMarkdown(markdown) {
  const html = marked.parse(markdown || '', { async: false });
  return DOMPurify.sanitize(html, PURIFY);
}

function addCopyButton(pre) {
  const button = document.createElement('button');
  button.type = 'button';
  button.className = 'copy-code';
  button.textContent = 'Copy';
  button.addEventListener('click', async () => {
    const code = pre.querySelector('code');
    try {
      await navigator.clipboard.writeText(code ? code.textContent : pre.textContent);
      button.textContent = 'Copied';
    } catch {
      button.textContent = 'Copy failed';
    }
    setTimeout(() => { button.textContent = 'Copy'; }, 1500);
  });
  const wrap = document.createElement('div');
  wrap.className = 'code-block';
  pre.replaceWith(wrap);
  wrap.append(button, pre);
}

/** Render `markdown` into `element`: sanitised, code highlighted, copy buttons. */
export function renderInto(element, markdown) {
  element.replaceChildren(renderMarkdown(markdown));
  for (const code of element.querySelectorAll('pre > code')) {
    // Language from the fence, else guessed; highlight.js escapes what it marks up.
    if (code.textContent.length < 20000) {
      try { hljs.highlightElement(code); } catch { /* stays plain text */ }
    }
    addCopyButton(code.parentElement);
  }
}
