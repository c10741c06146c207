// BotCall PWA: how a participant is described to people, in plain words.
//
// Pure functions (no DOM): view.js turns what they return into elements with
// textContent, and `node --test pwa/tests/` tests them. Everything here comes
// from the server, so it goes through text() (a string, at most 200 characters).

import { text } from './session.js?v=__BOTCALL_VERSION__';

/**
 * A bot's name for people: its agent id up to the '#' (the instance tag),
 * separators as spaces, the first letter capitalised. "orion#8f3a" -> "Orion".
 * @param {string} agentId the verified agent id
 * @returns {string} the name, or 'AI agent' when nothing is left
 */
export function agentName(agentId) {
  const base = text(agentId).split('#')[0].replace(/[-_.]+/g, ' ').trim();
  if (!base) return 'AI agent';
  return base.charAt(0).toUpperCase() + base.slice(1);
}

/**
 * Who verified a bot, as people read it: an issuer URL's host name
 * ("https://botauth.example" -> "botauth.example"), anything else as it is.
 * @param {string} issuer the attestation's `iss`
 * @returns {string}
 */
export function issuerLabel(issuer) {
  const value = text(issuer);
  if (/^https?:\/\//i.test(value)) {
    try {
      const host = new URL(value).hostname;
      if (host) return host;
    } catch {
      // Not a URL after all: shown as sent.
    }
  }
  return value;
}

/**
 * What a verified bot's card says.
 *
 * The visible part is one sentence; the agent id appears once, in the details
 * with the full issuer and the scopes (a <details> disclosure in the page).
 * @param {object} p the bot participant: agent_id, controller, issuer, scopes
 * @returns {{name: string, summary: string, details: Array<[string, string]>}}
 *   summary: "Orion, an AI agent, vouched for by gopi@example.com, verified by botauth.example."
 *   details: [label, value] rows
 */
export function botCard(p) {
  const agentId = text(p && p.agent_id);
  const name = agentName(agentId);
  const controller = text(p && p.controller);
  const issuer = text(p && p.issuer);
  const verifier = issuerLabel(issuer);
  let summary = `${name}, an AI agent`;
  if (controller) summary += `, vouched for by ${controller}`;
  if (verifier) summary += `, verified by ${verifier}`;
  const scopes = Array.isArray(p && p.scopes) ? p.scopes.map((s) => text(s)).filter(Boolean) : [];
  return {
    name,
    summary: `${summary}.`,
    details: [
      ['Agent ID', agentId || 'unknown'],
      ['Issuer', issuer || 'unknown'],
      ['Allowed to', scopes.length ? scopes.join(', ') : 'nothing listed'],
    ],
  };
}

/**
 * The word a participant's light stands for: muted wins over speaking.
 * @param {object} p a participant with `speaking` and `muted`
 * @returns {'Muted'|'Speaking'|''}
 */
export function statusText(p) {
  if (p && p.muted === true) return 'Muted';
  if (p && p.speaking === true) return 'Speaking';
  return '';
}

/**
 * The Mute button's label: what pressing it does.
 * @param {boolean} muted
 * @returns {'Mute'|'Unmute'}
 */
export function muteLabel(muted) {
  return muted ? 'Unmute' : 'Mute';
}
