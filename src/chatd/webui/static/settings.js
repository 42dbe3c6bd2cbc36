// The page's settings (sampling, system prompt, API key, theme), kept in localStorage
// so they are there on the next visit. Presets live in IndexedDB (store.js).

const KEY = 'chatd.settings';
const API_KEY = 'chatd.apiKey';
const THEME = 'chatd.theme';

export const DEFAULTS = { system: '', temperature: '', max_tokens: '', seed: '' };

export function loadSettings() {
  try {
    return { ...DEFAULTS, ...JSON.parse(localStorage.getItem(KEY) || '{}') };
  } catch {
    return { ...DEFAULTS };
  }
}

export function saveSettings(settings) {
  localStorage.setItem(KEY, JSON.stringify(settings));
}

export const apiKey = {
  get: () => localStorage.getItem(API_KEY) || '',
  set: (value) => (value ? localStorage.setItem(API_KEY, value)
                         : localStorage.removeItem(API_KEY)),
};

/** The request fields the settings stand for; empty fields are left to the server. */
export function requestFields(settings) {
  const fields = {};
  const number = (text) => (text === '' || text === null || text === undefined
    ? null : Number(text));
  const temperature = number(settings.temperature);
  const maxTokens = number(settings.max_tokens);
  const seed = number(settings.seed);
  if (temperature !== null && !Number.isNaN(temperature)) fields.temperature = temperature;
  if (maxTokens !== null && maxTokens > 0) fields.max_tokens = Math.floor(maxTokens);
  if (seed !== null && Number.isInteger(seed)) fields.seed = seed;
  return fields;
}

// Theme: 'auto' follows the system; 'light' / 'dark' force it. The highlight.js
// stylesheets are switched through their media attribute (no inline style needed).
const THEMES = ['auto', 'light', 'dark'];

export function currentTheme() {
  const theme = localStorage.getItem(THEME);
  return THEMES.includes(theme) ? theme : 'auto';
}

export function applyTheme(theme) {
  localStorage.setItem(THEME, theme);
  const root = document.documentElement;
  if (theme === 'auto') delete root.dataset.theme;
  else root.dataset.theme = theme;
  const light = document.getElementById('hl-light');
  const dark = document.getElementById('hl-dark');
  light.media = theme === 'auto' ? '(prefers-color-scheme: light)'
    : (theme === 'light' ? 'all' : 'not all');
  dark.media = theme === 'auto' ? '(prefers-color-scheme: dark)'
    : (theme === 'dark' ? 'all' : 'not all');
  return theme;
}

export function nextTheme(theme) {
  return THEMES[(THEMES.indexOf(theme) + 1) % THEMES.length];
}
