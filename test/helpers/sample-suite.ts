// A `sample` device served for the whole of a describe() block: created in
// before(), closed in after().  Read `dev` and `srv` inside tests (getters:
// they exist only once before() has run).
import { after, before } from 'node:test';
import { createSample, type SampleDevice } from '../../src/devices/sample.js';
import { serve, type Served } from './server.js';

export interface SampleSuite {
  readonly dev: SampleDevice;
  readonly srv: Served;
}

export function sampleForSuite(): SampleSuite {
  let dev: SampleDevice | undefined;
  let srv: Served | undefined;
  before(async () => {
    dev = createSample();
    srv = await serve(dev.device);
  });
  after(async () => {
    await srv?.close();
  });
  const ready = <T>(v: T | undefined): T => {
    if (v === undefined) throw new Error('sampleForSuite: used outside a test');
    return v;
  };
  return {
    get dev() { return ready(dev); },
    get srv() { return ready(srv); },
  };
}
