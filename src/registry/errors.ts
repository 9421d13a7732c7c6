import { ThinfsError, EXIT } from '../util/errors.js';

/** Credentials missing or refused by a registry (or its token service): exit code 6. */
export class AuthError extends ThinfsError {
  constructor(message: string) { super(message, EXIT.AUTH, 'EAUTH'); this.name = 'AuthError'; }
}

/** A registry answered with an error we cannot recover from; carries the HTTP status and OCI error codes. */
export class RegistryError extends ThinfsError {
  constructor(message: string, readonly status: number, readonly codes: string[] = [], exitCode: number = EXIT.FAILURE) {
    super(message, exitCode, 'EREGISTRY');
    this.name = 'RegistryError';
  }
}
