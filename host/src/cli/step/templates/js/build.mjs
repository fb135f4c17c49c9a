// `npm run build`: src/step.js and the step world in wit/ into step.wasm.
import { writeFile } from 'node:fs/promises';

let componentize;
try {
  ({ componentize } = await import('@bytecodealliance/componentize-js'));
} catch (e) {
  console.error(`componentize-js is not installed here (${e.code ?? e.message}): run \`npm install\` once, then \`npm run build\`.`);
  process.exit(1);
}

const { component } = await componentize({
  sourcePath: 'src/step.js',
  witPath: 'wit',
  worldName: 'step',
  // A step is called through its `run` export; it serves no incoming HTTP requests.
  disableFeatures: ['fetch-event'],
});
await writeFile('step.wasm', component);
console.log(`step.wasm: ${(component.byteLength / 1048576).toFixed(1)} MiB`);
