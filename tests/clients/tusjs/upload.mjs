// One tus-js-client upload of a file, for tests/clients/test_tus_js.py.
//
//   node upload.mjs <endpoint> <api key> <file path> [options as JSON]
//
// Options: chunkSize (bytes; default: the whole file in one PATCH), retryDelays (ms),
// metadata (default: {filename: <the file's name>}), checksum (send Upload-Checksum: sha1 on
// every PATCH), corruptChecksumAt (the index of the PATCH whose checksum is made wrong),
// parallelUploads (parts sent at once, joined by the concatenation extension).
//
// Prints one JSON line: {success, url, fileId (the File-Id of the last response), requests
// (each request's method, Upload-Offset, whether it carried a checksum, and the response's
// status and Upload-Offset), patches, checksums, error ({message, status}, or null)}.

import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { open, stat } from 'node:fs/promises'
import { basename } from 'node:path'
import { Upload } from 'tus-js-client'

const [endpoint, key, path, rawOptions = '{}'] = process.argv.slice(2)
const options = JSON.parse(rawOptions)
const size = (await stat(path)).size
const chunkSize = options.chunkSize ?? Number.POSITIVE_INFINITY

const requests = []
const entries = new WeakMap() // request -> its entry in `requests`
let patches = 0
let checksums = 0
let fileId = null

// tus-js-client 4.x has no checksum extension of its own: the PATCH's body is the file's bytes
// at its Upload-Offset, chunkSize of them (fewer at the end), so they are read again and hashed.
async function sha1Of(offset) {
  const length = Math.min(chunkSize, size - offset)
  const file = await open(path, 'r')
  try {
    const buffer = Buffer.alloc(length)
    let read = 0
    while (read < length) {
      const { bytesRead } = await file.read(buffer, read, length - read, offset + read)
      if (bytesRead === 0) throw new Error(`${path} ended at ${offset + read}`)
      read += bytesRead
    }
    return createHash('sha1').update(buffer).digest()
  } finally {
    await file.close()
  }
}

function statusOf(error) {
  return error?.originalResponse ? error.originalResponse.getStatus() : null
}

function finish(error, upload) {
  const result = {
    success: error === null,
    url: upload.url,
    fileId,
    requests,
    patches,
    checksums,
    error: error === null ? null : { message: String(error.message ?? error), status: statusOf(error) },
  }
  process.stdout.write(`${JSON.stringify(result)}\n`)
  process.exit(0)
}

const upload = new Upload(createReadStream(path), {
  endpoint,
  headers: { Authorization: `Bearer ${key}` },
  metadata: options.metadata ?? { filename: basename(path) },
  chunkSize,
  retryDelays: options.retryDelays ?? null,
  // >1: the file in that many partial uploads at once, then a final one (concatenation)
  parallelUploads: options.parallelUploads ?? 1,
  async onBeforeRequest(req) {
    const entry = { method: req.getMethod(), offset: req.getHeader('Upload-Offset') ?? null }
    entry.checksum = false
    if (req.getMethod() === 'PATCH') {
      const index = patches++
      if (options.checksum) {
        const digest = await sha1Of(Number(entry.offset))
        if (index === options.corruptChecksumAt) digest[0] ^= 0xff
        req.setHeader('Upload-Checksum', `sha1 ${digest.toString('base64')}`)
        entry.checksum = true
        checksums++
      }
    }
    requests.push(entry)
    entries.set(req, entry)
  },
  onAfterResponse(req, res) {
    const entry = entries.get(req)
    entry.status = res.getStatus()
    entry.responseOffset = res.getHeader('Upload-Offset') ?? null
    fileId = res.getHeader('File-Id') ?? null
  },
  onError(error) {
    finish(error, upload)
  },
  onSuccess() {
    finish(null, upload)
  },
})
upload.start()
