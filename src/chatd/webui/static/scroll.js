// Auto-scroll that follows a streaming answer only while the reader is at the bottom:
// scrolling up to read pauses it, scrolling back down (or "Latest") resumes it.

const SLACK_PX = 48;

export class Follower {
  constructor(container, button) {
    this.container = container;
    this.button = button;
    this.following = true;
    container.addEventListener('scroll', () => {
      this.following = this.atBottom();
      this.button.hidden = this.following;
    }, { passive: true });
    button.addEventListener('click', () => this.jump());
  }

  atBottom() {
    const c = this.container;
    return c.scrollHeight - c.scrollTop - c.clientHeight < SLACK_PX;
  }

  /** New content arrived: keep it in view if the reader is following. */
  update() {
    if (this.following) this.container.scrollTop = this.container.scrollHeight;
    else this.button.hidden = false;
  }

  jump() {
    this.following = true;
    this.button.hidden = true;
    this.container.scrollTop = this.container.scrollHeight;
  }
}
