// BotCall PWA: the DOM. render(state) makes the page show a session.js state;
// bind(dispatch) turns the page's buttons and forms into inputs. Everything the
// server sends is written with textContent, never as HTML.

import { meterFraction } from './audio.js?v=__BOTCALL_VERSION__';
import { botCard, muteLabel, statusText } from './people.js?v=__BOTCALL_VERSION__';
import { MAX_CHAT_LINES, SCREEN_OF, formatDuration, inviteTarget, nameOf } from './session.js?v=__BOTCALL_VERSION__';

const SCREENS = ['loading', 'home', 'lobby', 'call', 'ended', 'problem'];
const PILL_TEXT = { joining: 'Joining…', connecting: 'Connecting…', connected: 'Connected', reconnecting: 'Reconnecting…' };

function el(tag, className, content) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (content !== undefined) node.textContent = content;
  return node;
}

function fillStatus(li, p) {
  li.dataset.speaking = String(p.speaking === true);
  li.dataset.muted = String(p.muted === true);
  li.querySelector('.status').textContent = statusText(p);
}

// One participant: a head line (avatar, name, tags, the speaking light and its
// word) and, for a bot, who it is in one sentence with the details folded away.
function personItem(p, participantId) {
  const bot = p.kind === 'bot';
  const card = bot ? botCard(p) : null;
  const name = bot ? card.name : nameOf(p);
  const li = el('li', 'person');
  li.dataset.kind = bot ? 'bot' : 'human';
  li.dataset.participantId = p.participant_id;
  const head = el('div', 'person-head');
  const avatar = el('span', 'avatar', name.slice(0, 1).toUpperCase());
  avatar.setAttribute('aria-hidden', 'true');
  head.append(avatar);
  head.append(el('span', 'name', name));
  if (p.participant_id === participantId) head.append(el('span', 'tag', 'You'));
  if (bot) head.append(el('span', 'tag verified', 'Verified bot'));
  // The light is drawn by CSS from data-speaking; the word beside it is what
  // screen readers (and people who cannot tell the colours apart) get.
  const light = el('span', 'light');
  light.setAttribute('aria-hidden', 'true');
  head.append(el('span', 'status'), light);
  li.append(head);
  if (bot) {
    const identity = el('div', 'identity');
    identity.append(el('p', 'summary', card.summary));
    const details = el('details', 'bot-details');
    details.append(el('summary', '', 'Details'));
    const list = el('dl');
    for (const [label, value] of card.details) list.append(el('dt', '', label), el('dd', label === 'Agent ID' ? 'agent' : '', value));
    details.append(list);
    identity.append(details);
    li.append(identity);
  }
  fillStatus(li, p);
  return li;
}

// What the participant lists show apart from the speaking and muted lights.
function peopleKey(state) {
  const people = state.participants.map(({ speaking, muted, ...rest }) => rest);
  return JSON.stringify([state.participantId, state.lobbyMax, people]);
}

export class View {
  /**
   * @param {object} hooks
   * @param {() => {local: number, remote: number}} hooks.levels the meters, in dBFS
   * @param {() => void} hooks.onAudioHeard the call's audio was first heard (above -70 dBFS)
   */
  constructor({ levels, onAudioHeard }) {
    this.$ = (id) => document.getElementById(id);
    this.levels = levels;
    this.onAudioHeard = onAudioHeard;
    this.state = null;
    this.shown = { participants: null, peopleKey: null, problem: null, ended: null, chatId: 0 };
    this.clock = 0;
    this.frame = 0;
  }

  /** Route the page's controls to `dispatch(input)`. */
  bind(dispatch) {
    const $ = this.$;
    const displayName = () => $('display-name').value.trim();
    $('join-form').addEventListener('submit', (event) => {
      event.preventDefault();
      dispatch({ type: 'join', displayName: displayName() });
    });
    $('rejoin').addEventListener('click', () => dispatch({ type: 'join', displayName: displayName() }));
    $('retry').addEventListener('click', () => dispatch({ type: 'retry', displayName: displayName() }));
    $('mute').addEventListener('click', () => dispatch({ type: 'mute_clicked' }));
    $('hangup').addEventListener('click', () => dispatch({ type: 'hang_up' }));
    $('chat').addEventListener('toggle', () => dispatch({ type: 'chat_toggled', open: $('chat').open }));
    $('chat-form').addEventListener('submit', (event) => {
      event.preventDefault();
      dispatch({ type: 'chat_submit', text: $('chat-text').value });
    });
    $('home-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const target = inviteTarget($('home-link').value, location.href);
      $('home-error').hidden = target !== null;
      if (target) location.assign(target);
    });
  }

  announce(message) {
    // Clearing first makes screen readers repeat a message that did not change.
    const region = this.$('announce');
    region.textContent = '';
    requestAnimationFrame(() => {
      region.textContent = message;
    });
  }

  focus(screen) {
    this.$(`screen-${screen}`).querySelector('h1').focus({ preventScroll: true });
  }

  clearChatInput() {
    this.$('chat-text').value = '';
  }

  render(state) {
    const $ = this.$;
    this.state = state;
    document.documentElement.dataset.state = state.ui;
    const screen = SCREEN_OF[state.ui];
    for (const name of SCREENS) $(`screen-${name}`).hidden = name !== screen;
    if (PILL_TEXT[state.ui]) {
      $('conn').textContent = PILL_TEXT[state.ui];
      $('conn').dataset.state = state.ui;
    }
    if (screen === 'call') this.startTicking();
    else this.stopTicking();
    $('loading-text').textContent = state.loadingText;
    $('net').hidden = !state.netVisible;
    $('mute').setAttribute('aria-pressed', String(state.muted));
    $('mute').textContent = muteLabel(state.muted);
    $('chat-form').hidden = !state.canChat;
    this.renderProblem(state.problem);
    this.renderEnded(state.ended);
    this.renderPeople(state);
    this.renderChat(state);
  }

  renderProblem(problem) {
    if (problem === this.shown.problem) return;
    this.shown.problem = problem;
    if (problem === null) return;
    const $ = this.$;
    $('problem-title').textContent = problem.title;
    $('problem-detail').textContent = problem.detail;
    const steps = $('problem-steps');
    steps.replaceChildren(...(problem.steps || []).map((step) => el('li', '', step)));
    steps.hidden = !problem.steps;
    $('retry').hidden = !problem.retry;
  }

  renderEnded(ended) {
    if (ended === this.shown.ended) return;
    this.shown.ended = ended;
    if (ended === null) return;
    this.$('ended-detail').textContent = ended.detail;
    this.$('ended-duration').textContent = formatDuration(ended.durationMs);
  }

  renderPeople(state) {
    if (state.participants === this.shown.participants) return;
    this.shown.participants = state.participants;
    const key = peopleKey(state);
    if (key === this.shown.peopleKey) {
      // Only lights changed: update them in place.
      for (const p of state.participants) {
        for (const li of document.querySelectorAll(`li[data-participant-id="${CSS.escape(p.participant_id)}"]`)) fillStatus(li, p);
      }
      return;
    }
    this.shown.peopleKey = key;
    const people = [...state.participants];
    // You first, then bots, then the other people.
    const rank = (p) => (p.participant_id === state.participantId ? 0 : p.kind === 'bot' ? 1 : 2);
    people.sort((a, b) => rank(a) - rank(b));
    for (const id of ['lobby-people', 'call-people']) {
      const list = this.$(id);
      // A bot's details someone opened stay open when the list is redrawn.
      const open = new Set(Array.from(list.querySelectorAll('details[open]'), (d) => d.closest('li').dataset.participantId));
      list.replaceChildren(...people.map((p) => personItem(p, state.participantId)));
      for (const li of list.children) if (open.has(li.dataset.participantId)) li.querySelector('details').open = true;
    }
    const bots = people.filter((p) => p.kind === 'bot').length;
    const humans = people.length - bots;
    let summary = people.length === 0 ? 'Nobody is on the call yet.' : `${bots} ${bots === 1 ? 'bot' : 'bots'} and ${humans} ${humans === 1 ? 'person' : 'people'} on the call.`;
    if (state.lobbyMax !== null) summary += ` Room for ${state.lobbyMax} ${state.lobbyMax === 1 ? 'person' : 'people'}.`;
    this.$('lobby-summary').textContent = summary;
  }

  renderChat(state) {
    const log = this.$('chat-log');
    for (const line of state.chat) {
      if (line.id <= this.shown.chatId) continue;
      this.shown.chatId = line.id;
      if (line.note !== undefined) {
        log.append(el('li', 'note', line.note));
      } else {
        const item = el('li');
        item.append(el('strong', '', `${line.who}: `), el('span', '', line.body));
        log.append(item);
      }
    }
    while (log.childElementCount > MAX_CHAT_LINES) log.firstElementChild.remove();
    const badge = this.$('chat-unread');
    if (state.unread > 0) badge.textContent = String(state.unread);
    badge.hidden = state.unread === 0;
  }

  // --- the in-call clock and meters ---

  tick() {
    const connectedAt = this.state ? this.state.connectedAt : null;
    this.$('duration').textContent = formatDuration(connectedAt === null ? 0 : performance.now() - connectedAt);
  }

  drawMeters() {
    this.frame = requestAnimationFrame(() => this.drawMeters());
    const { local, remote } = this.levels();
    if (this.state && this.state.marks.audio === undefined && remote > -70) this.onAudioHeard();
    this.$('meter-local').style.transform = `scaleX(${meterFraction(local)})`;
    this.$('meter-remote').style.transform = `scaleX(${meterFraction(remote)})`;
  }

  startTicking() {
    if (this.clock) return;
    this.tick();
    this.clock = setInterval(() => this.tick(), 1000);
    this.frame = requestAnimationFrame(() => this.drawMeters());
  }

  stopTicking() {
    clearInterval(this.clock);
    this.clock = 0;
    cancelAnimationFrame(this.frame);
  }
}
