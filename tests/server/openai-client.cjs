// SPDX-License-Identifier: MIT
// moe-server through the official OpenAI client for JavaScript (npm "openai"),
// run by tests/unit/test_server.c: node openai-client.cjs BASE_URL API_KEY.
// Prints "ok ..." and exits 0, or says what differed and exits 1.
'use strict';
const OpenAI = require('openai');

const [base, key] = process.argv.slice(2);

function check(cond, what) {
	if (!cond)
		throw new Error(what);
}

async function main() {
	const client = new OpenAI({ baseURL: base + '/v1', apiKey: key, maxRetries: 0,
				    timeout: 60000 });
	const ids = [];

	for await (const m of client.models.list())
		ids.push(m.id);
	check(ids.length === 1, 'models.list: ' + JSON.stringify(ids));
	const model = ids[0];

	const msgs = [{ role: 'user', content: 'tell me a story' }];
	const chat = await client.chat.completions.create({ model, messages: msgs, max_tokens: 12,
							     temperature: 0 });
	const reply = chat.choices[0].message.content;
	check(typeof reply === 'string' && chat.object === 'chat.completion',
	      'chat: ' + JSON.stringify(chat));
	check(chat.usage.total_tokens === chat.usage.prompt_tokens + chat.usage.completion_tokens,
	      'chat usage: ' + JSON.stringify(chat.usage));

	const stream = await client.chat.completions.create({ model, messages: msgs,
							       max_tokens: 12, temperature: 0,
							       stream: true });
	let text = '', chunks = 0, finish = null;
	for await (const chunk of stream) {
		const c = chunk.choices[0];
		chunks++;
		text += (c && c.delta && c.delta.content) || '';
		if (c && c.finish_reason)
			finish = c.finish_reason;
	}
	check(chunks >= 2 && finish, 'stream: ' + chunks + ' chunks, finish ' + finish);
	check(text === reply, 'stream text ' + JSON.stringify(text) + ' differs from ' +
	      JSON.stringify(reply));

	const cmpl = await client.completions.create({ model, prompt: 'once upon a time',
						       max_tokens: 6, temperature: 0 });
	check(cmpl.object === 'text_completion' && typeof cmpl.choices[0].text === 'string',
	      'completions: ' + JSON.stringify(cmpl));

	const wrong = new OpenAI({ baseURL: base + '/v1', apiKey: key + 'x', maxRetries: 0 });
	let err = null;
	try {
		await wrong.chat.completions.create({ model, messages: msgs, max_tokens: 2 });
	} catch (e) {
		err = e;
	}
	check(err instanceof OpenAI.AuthenticationError && err.status === 401,
	      'a wrong key gave ' + err);

	let bad = null;
	try {
		await client.chat.completions.create({ model, messages: msgs, max_tokens: 2,
						      frobnicate: 1 });
	} catch (e) {
		bad = e;
	}
	check(bad instanceof OpenAI.BadRequestError && bad.param === 'frobnicate',
	      'an unknown field gave ' + bad);

	console.log('ok ' + JSON.stringify({ model, reply, chunks, finish }));
}

main().catch((e) => {
	console.error('openai-client: ' + (e && e.stack ? e.stack : e));
	process.exit(1);
});
