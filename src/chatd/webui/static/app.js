// The chat page: conversations in IndexedDB, answers streamed from this server.

import { APIError, loadModel, streamChat } from './api.js';
import { renderInto } from './markdown.js';
import { Follower } from './scroll.js';
import {
  apiKey, applyTheme, currentTheme, loadSettings, nextTheme, requestFields, saveSettings,
} from './settings.js';
import * as store from './store.js';
import { conversationItem, editorElement, el, formatStats, messageElement } from './view.js';

const $ = (id) => document.getElementById(id);

const state = {
  conversations: [],
  conversation: null,
  settings: loadSettings(),
  model: null,          // the model card, once /v1/models answered
  controller: null,     // AbortController of the answer being streamed
  attachments: [],      // data: URLs of images for the next message
};

let follower;
let answersEnded = 0;  // body[data-answers]: lets a test (or a script) wait for an answer

// ------------------------------------------------------------------ errors

function showError(error) {
  let text;
  if (error instanceof APIError && error.status) {
    text = `Error ${error.status}: ${error.message}`;
    if (error.status === 401) text += ' Set the server\'s API key in Settings.';
  } else {
    text = `Error: ${error.message || error}`;
  }
  $('banner-text').textContent = text;
  $('banner').hidden = false;
  $('banner').dataset.status = error.status || '';
  return text;
}

function hideError() {
  $('banner').hidden = true;
}

// ------------------------------------------------------------------ model

async function loadModelInfo() {
  try {
    state.model = await loadModel(apiKey.get());
    $('model-name').textContent = state.model.id;
    const modalities = state.model.input_modalities || [];
    $('attach').hidden = !modalities.includes('image');
    hideError();
  } catch (error) {
    state.model = null;
    showError(error);
  }
}

async function ensureModel() {
  if (!state.model) await loadModelInfo();
  return state.model !== null;
}

// ------------------------------------------------------------------ rendering

function renderSidebar() {
  const list = $('conversations');
  list.replaceChildren(...state.conversations.map((c) => conversationItem(c, {
    current: state.conversation && c.id === state.conversation.id,
    onOpen: openConversation,
    onRename: renameConversation,
    onExport: (id) => exportJSON(state.conversations.find((x) => x.id === id)),
    onDelete: removeConversation,
  })));
}

function renderConversation() {
  const conversation = state.conversation;
  $('title').textContent = conversation.title;
  document.title = `${conversation.title} · chatd`;
  const box = $('messages');
  const busy = state.controller !== null;
  const last = conversation.messages.length - 1;
  const items = conversation.messages.map((message, index) => messageElement(message, index, {
    isLast: index === last, busy, onEdit: startEdit, onRegenerate: regenerate,
  }));
  box.replaceChildren(...(items.length ? items
    : [el('div', { id: 'empty', class: 'muted',
                   text: 'Ask something. Enter sends, Shift+Enter is a new line, '
                         + 'Escape stops the answer.' })]));
  follower.update();
}

function setBusy(busy) {
  $('send').hidden = busy;
  $('stop').hidden = !busy;
  document.body.classList.toggle('busy', busy);
}

// ------------------------------------------------------------------ conversations

async function refreshList() {
  state.conversations = await store.listConversations();
  renderSidebar();
}

async function openConversation(id) {
  if (state.controller) return;
  const found = state.conversations.find((c) => c.id === id);
  if (!found) return;
  state.conversation = found;
  renderSidebar();
  renderConversation();
  follower.jump();
  document.getElementById('app').classList.remove('sidebar-open');
  $('input').focus();
}

function newChat() {
  if (state.controller) return;
  state.conversation = store.newConversation();
  renderSidebar();
  renderConversation();
  $('input').focus();
}

async function renameConversation(id, title) {
  const conversation = state.conversations.find((c) => c.id === id);
  if (!conversation) return;
  conversation.title = title;
  await store.saveConversation(conversation);
  await refreshList();
  if (state.conversation.id === id) renderConversation();
}

async function removeConversation(id) {
  await store.deleteConversation(id);
  await refreshList();
  if (state.conversation.id === id) {
    state.conversation = state.conversations[0] || store.newConversation();
    renderSidebar();
    renderConversation();
  }
}

function exportJSON(data, name) {
  const blob = new Blob([JSON.stringify(data, null, 2)], { type: 'application/json' });
  const url = URL.createObjectURL(blob);
  const link = el('a', { href: url, download: name || `chatd-${data.title || 'chat'}.json` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function persist() {
  await store.saveConversation(state.conversation);
  await refreshList();
}

// ------------------------------------------------------------------ answering

function wireMessages(messages) {
  const out = [];
  if (state.settings.system.trim()) out.push({ role: 'system', content: state.settings.system });
  for (const m of messages) {
    if (m.role === 'assistant' && !m.content) continue;  // a failed or empty answer
    if (m.images && m.images.length) {
      out.push({ role: m.role, content: [
        { type: 'text', text: m.content },
        ...m.images.map((url) => ({ type: 'image_url', image_url: { url } })),
      ] });
    } else {
      out.push({ role: m.role, content: m.content });
    }
  }
  return out;
}

function liveStats(started, firstAt, pieces) {
  const now = performance.now();
  if (firstAt === null) return `waiting for the first token… ${((now - started) / 1000).toFixed(1)} s`;
  const seconds = (now - firstAt) / 1000;
  return formatStats({ tokens: pieces, approx: true, ttft_ms: firstAt - started,
                       tps: seconds > 0.2 ? (pieces - 1) / seconds : 0 });
}

async function generate() {
  const conversation = state.conversation;
  const history = wireMessages(conversation.messages);
  const answer = { role: 'assistant', content: '' };
  conversation.messages.push(answer);
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  hideError();
  renderConversation();
  follower.jump();
  await persist();
  const article = $('messages').lastElementChild;
  const body = article.querySelector('.body');
  const statsLine = article.querySelector('.stats');
  const started = performance.now();
  let firstAt = null;
  let pieces = 0;
  let painting = false;
  const paint = () => {
    painting = false;
    renderInto(body, answer.content);
    statsLine.textContent = liveStats(started, firstAt, pieces);
    follower.update();
  };
  const ticker = setInterval(() => {
    if (!painting) statsLine.textContent = liveStats(started, firstAt, pieces);
  }, 250);
  try {
    const result = await streamChat({
      body: { model: state.model.id, messages: history, ...requestFields(state.settings) },
      apiKey: apiKey.get(),
      signal: controller.signal,
      onDelta: (text) => {
        if (firstAt === null) firstAt = performance.now();
        pieces += 1;
        answer.content += text;
        if (!painting) {
          painting = true;
          requestAnimationFrame(paint);
        }
      },
    });
    const end = performance.now();
    const tokens = result.usage ? result.usage.completion_tokens : pieces;
    const seconds = firstAt === null ? 0 : (end - firstAt) / 1000;
    answer.stats = {
      tokens, approx: !result.usage,
      ttft_ms: firstAt === null ? null : firstAt - started,
      tps: seconds > 0 && tokens > 1 ? (tokens - 1) / seconds : 0,
      finish: result.finishReason,
    };
  } catch (error) {
    if (error.name === 'AbortError') {
      const seconds = firstAt === null ? 0 : (performance.now() - firstAt) / 1000;
      answer.stats = { tokens: pieces, approx: true, stopped: true,
                       ttft_ms: firstAt === null ? null : firstAt - started,
                       tps: seconds > 0 && pieces > 1 ? (pieces - 1) / seconds : 0 };
    } else {
      const text = showError(error);
      if (!answer.content) conversation.messages.pop();
      else answer.error = text;
    }
  } finally {
    clearInterval(ticker);
    state.controller = null;
    setBusy(false);
    if (state.conversation === conversation) renderConversation();
    await persist();
    document.body.dataset.answers = String(++answersEnded);
    $('input').focus();
  }
}

function stop() {
  if (state.controller) state.controller.abort();
}

async function send() {
  if (state.controller) return;
  const input = $('input');
  const text = input.value;
  if (!text.trim() && !state.attachments.length) return;
  if (!(await ensureModel())) return;  // the banner says why; the text stays in the box
  const conversation = state.conversation;
  const message = { role: 'user', content: text };
  if (state.attachments.length) message.images = state.attachments.splice(0);
  renderAttachments();
  conversation.messages.push(message);
  if (conversation.title === 'New chat') {
    conversation.title = text.trim().split('\n')[0].slice(0, 48) || 'Image';
  }
  input.value = '';
  autoGrow();
  await generate();
}

async function regenerate() {
  if (state.controller || !(await ensureModel())) return;
  const messages = state.conversation.messages;
  if (messages.length && messages[messages.length - 1].role === 'assistant') messages.pop();
  await generate();
}

function startEdit(index) {
  if (state.controller) return;
  const article = $('messages').querySelector(`article[data-index="${index}"]`);
  const message = state.conversation.messages[index];
  const editor = editorElement(message.content, {
    onSave: async (text) => {
      if (!(await ensureModel())) return;
      state.conversation.messages.splice(index);
      state.conversation.messages.push({ ...message, content: text });
      await generate();
    },
    onCancel: () => renderConversation(),
  });
  article.querySelector('.body').replaceWith(editor);
  article.querySelector(':scope > .actions').hidden = true;
  editor.querySelector('textarea').focus();
}

// ------------------------------------------------------------------ composer

function autoGrow() {
  const input = $('input');
  input.style.height = 'auto';  // CSSOM, which the CSP allows (unlike style attributes)
  input.style.height = `${Math.min(input.scrollHeight, 240)}px`;
}

function renderAttachments() {
  const box = $('attachments');
  box.hidden = state.attachments.length === 0;
  box.replaceChildren(...state.attachments.map((url, i) => el('span', { class: 'attachment' },
    el('img', { src: url, alt: 'image to send', class: 'thumb' }),
    el('button', { type: 'button', class: 'icon', text: '✕', 'aria-label': 'Remove image',
                   onclick: () => { state.attachments.splice(i, 1); renderAttachments(); } }))));
}

function attachFile(file) {
  if (!file || !file.type.startsWith('image/')) return;
  const reader = new FileReader();
  reader.onload = () => {
    state.attachments.push(reader.result);
    renderAttachments();
  };
  reader.readAsDataURL(file);
}

// ------------------------------------------------------------------ settings

const FIELDS = { system: 'set-system', temperature: 'set-temperature',
                 max_tokens: 'set-max-tokens', seed: 'set-seed' };

function fillSettings() {
  for (const [key, id] of Object.entries(FIELDS)) $(id).value = state.settings[key] ?? '';
  $('set-api-key').value = apiKey.get();
}

async function fillPresets() {
  const presets = await store.listPresets();
  const select = $('preset-select');
  select.replaceChildren(...(presets.length
    ? presets.map((p) => el('option', { value: p.name, text: p.name }))
    : [el('option', { value: '', text: '(no presets)' })]));
}

async function savePreset() {
  const name = $('preset-name').value.trim();
  if (!name) {
    $('preset-name').focus();
    return;
  }
  await store.savePreset({ name, ...state.settings });
  $('preset-name').value = '';
  await fillPresets();
  $('preset-select').value = name;
}

async function applyPreset() {
  const name = $('preset-select').value;
  const preset = (await store.listPresets()).find((p) => p.name === name);
  if (!preset) return;
  for (const key of Object.keys(FIELDS)) state.settings[key] = preset[key] ?? '';
  saveSettings(state.settings);
  fillSettings();
}

async function deletePreset() {
  const name = $('preset-select').value;
  if (name) await store.deletePreset(name);
  await fillPresets();
}

function openSettings() {
  fillSettings();
  fillPresets();
  $('settings').showModal();
}

// ------------------------------------------------------------------ start

function wire() {
  follower = new Follower($('messages'), $('to-bottom'));
  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    send();
  });
  const input = $('input');
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  input.addEventListener('input', autoGrow);
  input.addEventListener('paste', (e) => {
    if ($('attach').hidden) return;
    for (const item of e.clipboardData.items) {
      if (item.kind === 'file') attachFile(item.getAsFile());
    }
  });
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && state.controller) {
      e.preventDefault();
      stop();
    }
  });
  $('stop').addEventListener('click', stop);
  $('new-chat').addEventListener('click', newChat);
  $('export-all').addEventListener('click', () => exportJSON(state.conversations,
                                                             'chatd-conversations.json'));
  $('banner-close').addEventListener('click', hideError);
  $('attach').addEventListener('click', () => $('image-file').click());
  $('image-file').addEventListener('change', (e) => {
    for (const file of e.target.files) attachFile(file);
    e.target.value = '';
  });
  $('open-sidebar').addEventListener('click',
    () => $('app').classList.add('sidebar-open'));
  $('close-sidebar').addEventListener('click',
    () => $('app').classList.remove('sidebar-open'));
  $('theme').addEventListener('click', () => {
    const theme = applyTheme(nextTheme(currentTheme()));
    $('theme').title = `Theme: ${theme}`;
  });
  $('open-settings').addEventListener('click', openSettings);
  for (const [key, id] of Object.entries(FIELDS)) {
    $(id).addEventListener('input', () => {
      state.settings[key] = $(id).value;
      saveSettings(state.settings);
    });
  }
  $('set-api-key').addEventListener('change', () => {
    apiKey.set($('set-api-key').value.trim());
  });
  $('settings').addEventListener('close', () => {
    apiKey.set($('set-api-key').value.trim());
    loadModelInfo();
    $('input').focus();
  });
  $('preset-save').addEventListener('click', savePreset);
  $('preset-apply').addEventListener('click', applyPreset);
  $('preset-delete').addEventListener('click', deletePreset);
}

async function start() {
  const theme = applyTheme(currentTheme());
  $('theme').title = `Theme: ${theme}`;
  wire();
  $('input').focus();
  await refreshList();
  state.conversation = state.conversations[0] || store.newConversation();
  renderSidebar();
  renderConversation();
  follower.jump();
  document.body.dataset.ready = '1';
  await loadModelInfo();
}

start();
