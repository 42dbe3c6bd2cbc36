// The server's OpenAI API, as the page uses it: list the model, stream a chat.
// Same origin only (the CSP allows nothing else); the key, when set, goes as Bearer.

export class APIError extends Error {
  constructor(status, message, code = null) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers(apiKey) {
  const h = { 'Content-Type': 'application/json' };
  if (apiKey) h.Authorization = `Bearer ${apiKey}`;
  return h;
}

async function failure(response) {
  let message = response.statusText || 'request failed';
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code || null;
    }
  } catch { /* not JSON: keep the status text */ }
  return new APIError(response.status, message, code);
}

async function getJSON(path, apiKey) {
  const response = await fetch(path, { headers: headers(apiKey) });
  if (!response.ok) throw await failure(response);
  return response.json();
}

/** The first model the server lists, with its card (input_modalities, if any). */
export async function loadModel(apiKey) {
  const list = await getJSON('/v1/models', apiKey);
  const id = list.data && list.data[0] && list.data[0].id;
  if (!id) throw new APIError(0, 'The server lists no model.');
  let card = list.data[0];
  try {
    card = await getJSON(`/v1/models/${encodeURIComponent(id)}`, apiKey);
  } catch { /* the list entry will do */ }
  return card;
}

/**
 * Stream one chat completion. `onDelta(text)` gets each piece of the answer; resolves
 * to {usage, finishReason, firstTokenAt} when the stream ends. `signal` aborts it: the
 * connection closes and the server cancels the generation.
 */
export async function streamChat({ body, apiKey, signal, onDelta }) {
  const response = await fetch('/v1/chat/completions', {
    method: 'POST',
    headers: headers(apiKey),
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
    signal,
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  const result = { usage: null, finishReason: null, firstTokenAt: null };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split('\n')) {
        if (!line.startsWith('data:')) continue;  // comments, keep-alives
        const data = line.slice(5).trim();
        if (data === '[DONE]') return result;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new APIError(0, chunk.error.message || 'stream failed');
        if (chunk.usage) result.usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          const text = choice.delta && choice.delta.content;
          if (text) {
            if (result.firstTokenAt === null) result.firstTokenAt = performance.now();
            onDelta(text);
          }
          if (choice.finish_reason) result.finishReason = choice.finish_reason;
        }
      }
    }
  }
  return result;
}
