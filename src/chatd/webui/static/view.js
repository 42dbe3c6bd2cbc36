// DOM for messages and the conversation list. Only text nodes and attributes set
// through the DOM: the one place HTML is parsed is markdown.js, behind the sanitiser.

import { renderInto } from './markdown.js';

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

export function formatStats(stats) {
  if (!stats) return '';
  const parts = [];
  if (stats.tokens !== undefined) {
    parts.push(`${stats.approx ? '~' : ''}${stats.tokens} tokens`);
  }
  if (stats.tps) parts.push(`${stats.tps.toFixed(1)} tok/s`);
  if (stats.ttft_ms !== undefined && stats.ttft_ms !== null) {
    parts.push(`TTFT ${Math.round(stats.ttft_ms)} ms`);
  }
  if (stats.stopped) parts.push('stopped');
  else if (stats.finish === 'length') parts.push('cut at max tokens');
  return parts.join(' · ');
}

/**
 * One message. `actions` has the callbacks for its buttons; returns the article, whose
 * `.body` the streaming code re-renders and whose `.stats` it updates.
 */
export function messageElement(message, index, { isLast, busy, onEdit, onRegenerate }) {
  const body = el('div', { class: 'body' });
  if (message.role === 'assistant') {
    renderInto(body, message.content);
  } else {
    body.append(el('div', { class: 'plain', text: message.content }));
    for (const url of message.images || []) {
      body.append(el('img', { class: 'thumb', src: url, alt: 'attached image' }));
    }
  }
  const actions = el('div', { class: 'actions' });
  if (message.role === 'user') {
    actions.append(el('button', { type: 'button', class: 'edit', text: 'Edit',
                                  onclick: () => onEdit(index) }));
  } else {
    actions.append(el('button', {
      type: 'button', class: 'copy-answer', text: 'Copy',
      onclick: (e) => navigator.clipboard.writeText(message.content).then(
        () => { e.target.textContent = 'Copied'; }, () => {}),
    }));
    if (isLast) {
      actions.append(el('button', { type: 'button', class: 'regenerate', text: 'Regenerate',
                                    onclick: () => onRegenerate() }));
    }
  }
  for (const button of actions.querySelectorAll('button')) {
    if (!button.classList.contains('copy-answer')) button.disabled = busy;
  }
  const article = el('article', { class: `msg ${message.role}`, dataset: { index } },
                     el('div', { class: 'role', text: message.role === 'user' ? 'You'
                                                                            : 'Assistant' }),
                     body);
  if (message.role === 'assistant') {
    article.append(el('div', { class: 'stats muted', text: formatStats(message.stats) }));
  }
  if (message.error) article.append(el('div', { class: 'error', text: message.error }));
  article.append(actions);
  return article;
}

/** The inline editor that replaces a user message's body. */
export function editorElement(text, { onSave, onCancel }) {
  const area = el('textarea', { class: 'edit-box', rows: '3' });
  area.value = text;
  const save = el('button', { type: 'button', class: 'primary save-edit',
                              text: 'Save & regenerate', onclick: () => onSave(area.value) });
  const cancel = el('button', { type: 'button', text: 'Cancel', onclick: onCancel });
  area.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      onSave(area.value);
    } else if (e.key === 'Escape') {
      onCancel();
    }
  });
  return el('div', { class: 'editor' }, area, el('div', { class: 'actions' }, save, cancel));
}

/** One row of the conversation list. */
export function conversationItem(conversation, { current, onOpen, onRename, onExport,
                                                onDelete }) {
  const title = el('button', { type: 'button', class: 'conv-title', text: conversation.title,
                               title: conversation.title,
                               onclick: () => onOpen(conversation.id) });
  const rename = el('button', { type: 'button', class: 'icon rename', text: '✎',
                                'aria-label': 'Rename', title: 'Rename' });
  const item = el('li', { class: current ? 'current' : '', dataset: { id: conversation.id } });
  rename.addEventListener('click', () => {
    const input = el('input', { class: 'rename-box', 'aria-label': 'New name' });
    input.value = conversation.title;
    let done = false;
    const finish = (keep) => {
      if (done) return;
      done = true;
      if (keep && input.value.trim()) onRename(conversation.id, input.value.trim());
      else input.replaceWith(title);
    };
    input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') finish(true);
      else if (e.key === 'Escape') finish(false);
    });
    input.addEventListener('blur', () => finish(true));
    title.replaceWith(input);
    input.focus();
    input.select();
  });
  const exportButton = el('button', { type: 'button', class: 'icon export', text: '⤓',
                                      'aria-label': 'Export as JSON', title: 'Export as JSON',
                                      onclick: () => onExport(conversation.id) });
  // Deleting asks twice through the button itself (no confirm() dialog).
  const remove = el('button', { type: 'button', class: 'icon delete', text: '✕',
                                'aria-label': 'Delete', title: 'Delete' });
  remove.addEventListener('click', () => {
    if (remove.dataset.armed) {
      onDelete(conversation.id);
    } else {
      remove.dataset.armed = '1';
      remove.textContent = 'Delete?';
      setTimeout(() => { delete remove.dataset.armed; remove.textContent = '✕'; }, 3000);
    }
  });
  item.append(title, rename, exportButton, remove);
  return item;
}

export { el };
