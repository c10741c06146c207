// How participants are described (pwa/people.js) without a browser: `node --test pwa/tests/`.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { agentName, botCard, issuerLabel, muteLabel, statusText } from '../people.js';

const ORION = {
  participant_id: 'p-bot',
  kind: 'bot',
  display_name: 'orion#8f3a',
  agent_id: 'orion#8f3a',
  controller: 'gopi@example.com',
  issuer: 'https://botauth.example',
  scopes: ['call:create', 'call:voice'],
};

test('a bot card is one plain sentence; the agent id, issuer and scopes are details', () => {
  const card = botCard(ORION);
  assert.equal(card.name, 'Orion');
  assert.equal(card.summary, 'Orion, an AI agent, vouched for by gopi@example.com, verified by botauth.example.');
  assert.deepEqual(card.details, [
    ['Agent ID', 'orion#8f3a'],
    ['Issuer', 'https://botauth.example'],
    ['Allowed to', 'call:create, call:voice'],
  ]);
  // The agent id is written once in the whole card.
  const everything = [card.name, card.summary, ...card.details.flat()].join('\n');
  assert.equal(everything.split('orion#8f3a').length - 1, 1);
});

test('a bot card with missing or hostile claims still reads as a sentence', () => {
  const card = botCard({ kind: 'bot', agent_id: '#', controller: 42, issuer: null, scopes: 'call:voice' });
  assert.equal(card.name, 'AI agent');
  assert.equal(card.summary, 'AI agent, an AI agent, vouched for by 42.');
  assert.deepEqual(card.details, [
    ['Agent ID', '#'],
    ['Issuer', 'unknown'],
    ['Allowed to', 'nothing listed'],
  ]);
  const long = botCard({ agent_id: 'x'.repeat(5000), controller: 'y'.repeat(5000), scopes: [{}, 'a'] });
  assert.ok(long.summary.length < 500, 'server text is cut to 200 characters');
  assert.equal(long.details[2][1], 'a');
  assert.equal(botCard(null).summary, 'AI agent, an AI agent.');
});

test('agent names and issuer labels', () => {
  assert.equal(agentName('orion#8f3a'), 'Orion');
  assert.equal(agentName('support_bot-eu#1'), 'Support bot eu');
  assert.equal(agentName('Vega'), 'Vega');
  assert.equal(agentName(undefined), 'AI agent');
  assert.equal(issuerLabel('https://botauth.example'), 'botauth.example');
  assert.equal(issuerLabel('HTTPS://Auth.Example.com:8443/tenant/'), 'auth.example.com');
  assert.equal(issuerLabel('botcall-dev'), 'botcall-dev');
  assert.equal(issuerLabel('https://'), 'https://');
  assert.equal(issuerLabel(7), '7');
});

test('the light and the Mute button say what is true', () => {
  assert.equal(statusText({ speaking: true, muted: false }), 'Speaking');
  assert.equal(statusText({ speaking: true, muted: true }), 'Muted');
  assert.equal(statusText({ speaking: false }), '');
  assert.equal(statusText({ speaking: 'true' }), '');
  assert.equal(muteLabel(false), 'Mute');
  assert.equal(muteLabel(true), 'Unmute');
});
